"""Structured logging: JSON lines in production, readable coloured lines in a terminal.

Every line carries ``component`` and, when known, ``workspace``. A redaction filter
removes secrets (registered values, bearer tokens, ``Authorization`` headers, key=value
pairs with secret-looking names) from messages, arguments and attached fields. Both formats
escape control characters (C0 including CR/LF/ESC, DEL, C1, Unicode line separators and bidi
overrides) wherever a value came from, so a client cannot forge a line or drive a terminal
through a URL or a header. Library loggers (``asyncio``, ``aiohttp``, ``aiokafka``,
``opentelemetry``) go through the same handler, with a repeat and rate limit.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

from pipeline.redaction import text as _text
from pipeline.redaction.registry import register_secret
from pipeline.redaction.urls import has_url, redact_bare_urls, redact_urls_in
from schemas.secret_names import is_secret_name

__all__ = ["RedactingStream", "get_logger", "redact_registered", "redact_text", "register_secret", "setup_logging"]

_PATTERNS = [
    re.compile(r"(?i)(bearer|basic|splunk|apikey)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(
        r"(?i)(authorization|x-api-key|api[_-]?key|token|secret|password)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"
    ),
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),
]
_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def redact_text(text: str) -> str:
    """Remove registered secrets, credential shapes, URL credentials and secret-looking tokens from ``text``."""
    text = _text.redact_text(text)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} <redacted>", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    return _PATTERNS[2].sub("<redacted>", text)


def redact_registered(text: str) -> str:
    """Registered secrets (every form) and URL credentials/paths (hook URLs without a scheme too)
    removed, no shape pass.

    For text made of key paths and fixed words (config errors), where ``api_key: environment
    variable … is not set`` would lose its words to the assigned-value shape.
    """
    text = _text.replace_registered(text, fingerprint=False)
    return redact_bare_urls(redact_urls_in(text) if has_url(text) else text)


class RedactingStream:
    """A text stream whose every write goes through :func:`redact_text` (the CLI's stderr).

    A last line of defence: whatever a command prints about a failure (an upstream body quoted
    in an exception, a sink check, a replay failure) loses registered secrets and credential
    shapes even when the code that built the message forgot to redact it.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        """Write ``text`` redacted."""
        self.raw.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class RedactingFilter(logging.Filter):
    """Rewrite each record so no secret leaves the process through logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message (with its args applied) and string extras."""
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not hide the log line
            msg = str(record.msg)
        record.msg = redact_text(msg)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        for k, v in list(record.__dict__.items()):
            if k not in _STD:
                setattr(record, k, _redact_field(k, v))
        return True


def _redact_field(name: str, value: Any) -> Any:
    """Redact an attached field: by its name, inside containers, and in the text of other objects."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if name and is_secret_name(name):
        return "<redacted>"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_field("", v) for v in value]
    return redact_text(str(value))  # exceptions, bytes, objects: their text may carry a secret


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(_escape_one, text)


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    converter = staticmethod(time.gmtime)  # the timestamp ends in Z: render it in UTC

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": getattr(record, "component", record.name.removeprefix("instantly_audit.")),
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_text:
            out["exc"] = record.exc_text
        # orjson escapes C0; DEL, C1, line separators and bidi overrides are valid JSON string
        # characters, so they are escaped here (only strings can hold them: JSON syntax is ASCII).
        return _CONTROL.sub(_json_escape, orjson.dumps(out, default=str).decode())


def no_color() -> bool:
    """Whether ``NO_COLOR`` asks for no colour (set to anything but the empty string; no-color.org)."""
    return os.environ.get("NO_COLOR", "") != ""


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal, coloured by level unless ``NO_COLOR`` is set."""

    COLORS = {
        "DEBUG": "\x1b[2m",
        "INFO": "\x1b[36m",
        "WARNING": "\x1b[33m",
        "ERROR": "\x1b[31m",
        "CRITICAL": "\x1b[1;31m",
    }

    def __init__(self, color: bool):
        super().__init__()
        self.color = color and not no_color()

    def format(self, record: logging.LogRecord) -> str:
        """Render the record."""
        comp = escape_controls(str(getattr(record, "component", record.name.removeprefix("instantly_audit."))))
        fields = " ".join(
            f"{escape_controls(k)}={escape_controls(str(v))}" for k, v in _extras(record).items() if k != "component"
        )
        level = record.levelname.lower()
        level = f"{self.COLORS.get(record.levelname, '')}{level:<7}\x1b[0m" if self.color else f"{level:<7}"
        line = f"{self.formatTime(record, '%H:%M:%S')} {level} {comp}: {escape_controls(record.getMessage())}"
        if fields:
            line += f"  {fields}"
        if record.exc_text:  # a traceback keeps its lines, indented so none can pass for a log line
            line += "".join(f"\n    {escape_controls(t)}" for t in record.exc_text.splitlines())
        return line


def setup_logging(fmt: str = "auto", level: str = "INFO", stream: Any = None) -> None:
    """Configure the ``instantly_audit`` loggers (idempotent)."""
    stream = stream or sys.stderr
    if isinstance(stream, RedactingStream):  # log lines are redacted field by field already
        stream = stream.raw
    tty = hasattr(stream, "isatty") and stream.isatty()
    handler = logging.StreamHandler(stream)
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter(color=tty))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("instantly_audit")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # Third-party loggers go through the same handler (JSON, redaction) rather than Python's
    # last-resort handler: logger filters do not apply to child loggers (aiokafka.conn), handler
    # filters do. A repeat of the same line is dropped for 30 s (a broker outage repeats a lot),
    # and each library logger gets at most 20 lines per 30 s (asyncio's accept loop under a
    # file-descriptor limit logs a traceback per attempt).
    lib = logging.StreamHandler(stream)
    lib.setFormatter(handler.formatter)
    lib.addFilter(RepeatFilter(30.0, burst=LIBRARY_BURST))  # first: a dropped line costs no redaction
    lib.addFilter(RedactingFilter())
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.addHandler(lib)
        lg.setLevel(logging.WARNING)
        lg.propagate = False


LIBRARY_LOGGERS = ("asyncio", "aiohttp", "aiokafka", "kafka", "opentelemetry")
"""Third-party loggers routed through the JSON/redaction handler (children such as
``aiohttp.access`` or ``opentelemetry.sdk.trace`` propagate to them)."""
LIBRARY_BURST = 20


class RepeatFilter(logging.Filter):
    """Drop a line identical (logger, level, message template) to one emitted less than ``window`` s ago.

    With ``burst``, also keep at most ``burst`` lines per top-level logger name (``asyncio``,
    ``aiohttp``, ...) per ``window``, however much each line differs (object ids, addresses).
    """

    def __init__(self, window: float, *, burst: int | None = None):
        super().__init__()
        self.window = window
        self.burst = burst
        self._last: dict[tuple[str, int, str], float] = {}
        self._budget: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the first of a burst of repeats (and at most ``burst`` lines per logger per window)."""
        key = (record.name, record.levelno, str(record.msg))
        now = record.created
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        if self.burst is not None:
            top = record.name.split(".", 1)[0]
            start, n = self._budget.get(top, (now, 0))
            if now - start >= self.window:
                start, n = now, 0
            self._budget[top] = (start, n + 1)
            if n >= self.burst:
                return False
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = now
        return True


class _ComponentAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds ``component`` and keeps the caller's ``extra=`` fields (the stock adapter drops them)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def get_logger(component: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose lines carry ``component`` (and any ``extra=`` fields, e.g. ``workspace``)."""
    return _ComponentAdapter(logging.getLogger(f"instantly_audit.{component}"), {"component": component})
