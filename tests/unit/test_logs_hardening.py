"""Log output a hostile client cannot shape: control characters escaped in both formats, library
loggers (asyncio, aiohttp, opentelemetry) routed through the JSON/redaction handler and bounded."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest

from pipeline.observability.logs import escape_controls, get_logger, register_secret, setup_logging

SECRET = "canary-hardening-5f1e0c9a7b3d4e2f8a6c"
# ESC sequences (clear screen, set title), CR/LF (a fake line), BEL, DEL, C1 CSI, NEL, U+2028, bidi override
HOSTILE = "/hooks/x\x1b[2J\x1b]0;owned\x07\r\n2026-01-01 info webhook: forged line\x7f\x9b31m\x85\u2028\u202e"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def restore() -> Iterator[None]:
    """Put the loggers this test configures back (handlers, levels, propagation)."""
    names = ["instantly_audit", "asyncio", "aiohttp", "opentelemetry", "aiokafka", "kafka"]
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in names
    }
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_control_characters_are_escaped(fmt: str, restore: None) -> None:
    """A URL or header full of terminal escapes and line breaks gives one line with no raw control byte."""
    buf = io.StringIO()
    setup_logging(fmt, "INFO", buf)
    get_logger("webhook").warning(f"Webhook delivery rejected {HOSTILE}", extra={"path": HOSTILE, "ua": HOSTILE})
    out = buf.getvalue()
    lines = out.splitlines()
    assert len(lines) == 1, lines
    assert not RAW_CONTROL.search(out)
    assert "forged line" in lines[0]  # the text is kept, only made harmless
    if fmt == "json":
        doc = orjson.loads(lines[0])
        assert doc["path"] == HOSTILE  # JSON escapes decode back to the exact value
    else:
        assert "\\x1b[2J" in lines[0] and "\\r\\n" in lines[0] and "\\u202e" in lines[0]


def test_console_traceback_lines_cannot_pass_for_log_lines(restore: None) -> None:
    """Traceback lines are indented and escaped; an exception message cannot start a new line."""
    buf = io.StringIO()
    setup_logging("console", "INFO", buf)
    try:
        raise ValueError("boom\n00:00:00 info    webhook: forged\x1b[2J")
    except ValueError:
        get_logger("webhook").exception("Handler failed")
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("Handler failed")
    assert all(line.startswith("    ") for line in lines[1:])
    assert not RAW_CONTROL.search(buf.getvalue())


def test_escape_controls_keeps_ordinary_text() -> None:
    """Printable text, including non-ASCII letters, is untouched."""
    assert escape_controls("café /hooks/crm 200") == "café /hooks/crm 200"
    assert escape_controls("a\tb\x00") == "a\\tb\\x00"


def test_asyncio_error_is_one_redacted_json_line(restore: None) -> None:
    """An asyncio logger error (as its accept loop logs one) is one JSON line, secret removed."""
    register_secret(SECRET)
    buf = io.StringIO()
    setup_logging("json", "INFO", buf)
    try:
        raise OSError(24, f"Too many open files while reading X-Webhook-Secret: {SECRET}")
    except OSError as err:
        logging.getLogger("asyncio").error("socket.accept() out of system resource: %s", SECRET, exc_info=err)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[0])
    assert doc["component"] == "asyncio" and doc["level"] == "error"
    assert "Too many open files" in doc["exc"]
    assert SECRET not in lines[0] and SECRET[:12] not in lines[0]


def test_library_error_storm_is_bounded(restore: None) -> None:
    """10,000 accept errors (identical or each different) give at most a handful of lines."""
    buf = io.StringIO()
    setup_logging("json", "INFO", buf)
    accept = logging.getLogger("asyncio")
    for i in range(5_000):
        accept.error("socket.accept() out of system resource")
        accept.error("Task exception was never retrieved future: <Task at 0x%x>", 0x7F0000 + i)
    otel = logging.getLogger("opentelemetry.sdk.trace.export")
    for i in range(1_000):
        otel.error("Exception while exporting Span batch %d", i)
    lines = buf.getvalue().splitlines()
    per = {c: sum(orjson.loads(x)["component"].startswith(c) for x in lines) for c in ("asyncio", "opentelemetry")}
    assert 1 <= per["asyncio"] <= 20 and 1 <= per["opentelemetry"] <= 20, per
    assert all(orjson.loads(x) for x in lines)  # every line is JSON, none is a plain-text traceback
