"""Logs: JSON lines carry component and workspace; canary secrets never leave; console on a TTY."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pipeline.observability.logs import get_logger, redact_text, register_secret, setup_logging

CANARY = "canary-9f8e7d6c5b4a-SECRET"
BEARER = "zyx987canarytoken654"
B64_CANARY = "cAn4ry+/SeCr3t=="  # URL-encoded: cAn4ry%2B%2FSeCr3t%3D%3D


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Yes."""
        return True


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """JSON logging into a buffer, with the canary registered; restores the logger afterwards."""
    buf = io.StringIO()
    register_secret(CANARY)
    register_secret(B64_CANARY)
    setup_logging("json", "DEBUG", buf)
    yield buf
    root = logging.getLogger("instantly_audit")
    for h in list(root.handlers):
        root.removeHandler(h)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    """The JSON objects written so far (each line must parse on its own)."""
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def assert_clean(buf: io.StringIO) -> None:
    """No canary, no bearer token, in any form, anywhere in the output."""
    text = buf.getvalue()
    for secret in (CANARY, BEARER, B64_CANARY, "cAn4ry%2B%2FSeCr3t%3D%3D"):
        assert secret not in text, f"{secret!r} leaked: {text}"


def test_json_line_shape(out: io.StringIO) -> None:
    """One JSON object per line: ts (UTC, Z), level, component, msg, and the attached fields."""
    log = get_logger("pollers")
    log.info("Poll finished for %s.", "acme", extra={"workspace": "ws-1", "events": 12})
    (line,) = lines(out)
    assert set(line) == {"ts", "level", "component", "msg", "workspace", "events"}
    assert line["component"] == "pollers" and line["workspace"] == "ws-1" and line["events"] == 12
    assert line["level"] == "info" and line["msg"] == "Poll finished for acme."
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_timestamp_is_utc(out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Z timestamp is UTC even when the process runs in another time zone."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        record = logging.LogRecord("instantly_audit.x", logging.INFO, __file__, 1, "m", None, None)
        record.created = 1_780_000_000.0  # 2026-05-28T20:26:40Z
        record.msecs = 0
        from pipeline.observability.logs import JsonFormatter

        assert orjson.loads(JsonFormatter().format(record))["ts"] == "2026-05-28T20:26:40.000Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_caller_fields_do_not_replace_component(out: io.StringIO) -> None:
    """The adapter merges extra= fields with its component (the stock adapter drops them)."""
    get_logger("sinks").warning("Batch failed.", extra={"sink": "soc"})
    get_logger("sinks").warning("No extra.")
    first, second = lines(out)
    assert first["component"] == "sinks" and first["sink"] == "soc"
    assert second["component"] == "sinks"


def test_canary_redacted_from_message_and_args(out: io.StringIO) -> None:
    """A registered secret and bearer tokens are removed from the message and its arguments."""
    log = get_logger("client")
    log.info(f"Calling with {CANARY}")
    log.info("Header %s and token %s", f"Authorization: Bearer {BEARER}", CANARY)
    log.info("url=%s", "https://x/?key=cAn4ry%2B%2FSeCr3t%3D%3D&page=2")
    assert_clean(out)
    first, second, url = (line["msg"] for line in lines(out))
    assert "<redacted>" in first and "<redacted>" in second
    # the URL around the registered value is one URL still: its whole query becomes one fingerprint
    assert re.fullmatch(r"url=https://x/sha256:[0-9a-f]{8}", url)


def test_canary_redacted_from_extra_fields(out: io.StringIO) -> None:
    """Attached fields are redacted: strings, nested containers, secret-named keys, any object's text."""
    log = get_logger("client")
    log.info(
        "Request failed.",
        extra={
            "workspace": "ws-1",
            "error": f"401 for key {CANARY}",
            "headers": {"Authorization": f"Bearer {BEARER}", "x-trace": "ok"},
            "attempts": [CANARY, 1, None],
            "api_key": "looks-innocent-1234",
            "api_key_id": "fp-0a1b2c3d",
            "cause": ValueError(f"bad {CANARY}"),
            "raw": CANARY.encode(),
        },
    )
    assert_clean(out)
    (line,) = lines(out)
    assert line["headers"] == {"Authorization": "<redacted>", "x-trace": "ok"}
    assert line["api_key"] == "<redacted>" and line["api_key_id"] == "fp-0a1b2c3d"
    assert line["attempts"] == ["<redacted>", 1, None]
    assert line["workspace"] == "ws-1"


def test_canary_redacted_from_exceptions(out: io.StringIO) -> None:
    """Exception text and chained causes in tracebacks are redacted."""
    log = get_logger("client")
    try:
        try:
            raise ConnectionError(f"headers={{'Authorization': 'Bearer {BEARER}'}}")
        except ConnectionError as inner:
            raise RuntimeError(f"wrapped {CANARY}") from inner
    except RuntimeError:
        log.exception("Call failed.")
    log.error("With stack.", stack_info=True, extra={"note": CANARY})
    assert_clean(out)
    first = lines(out)[0]
    assert "RuntimeError: wrapped <redacted>" in first["exc"]
    assert "ConnectionError" in first["exc"]


def test_other_libraries_loggers_are_redacted(out: io.StringIO) -> None:
    """aiohttp's client logger (a child of a routed library logger) comes out redacted, as JSON."""
    logging.getLogger("aiohttp.client").warning("Request with Authorization: Bearer %s", BEARER)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and BEARER not in lines[0]
    assert orjson.loads(lines[0])["component"] == "aiohttp.client"


def test_redact_text_patterns() -> None:
    """Secret-looking tokens are removed even when not registered."""
    assert redact_text("password=hunter2222") == "password=<redacted>"
    assert redact_text("whsec_abcdefghijklmnop") == "<redacted>"
    assert redact_text("Splunk 1234-5678-abcd") == "Splunk <redacted>"
    assert redact_text("nothing to see") == "nothing to see"


def test_console_format_on_a_tty() -> None:
    """On a terminal (format auto) lines are readable and coloured, with fields after the message."""
    tty = Tty()
    register_secret(CANARY)
    setup_logging("auto", "INFO", tty)
    try:
        get_logger("rules").warning("Alert raised.", extra={"workspace": "ws-1", "rule": CANARY})
        try:
            raise KeyError(CANARY)
        except KeyError:
            get_logger("rules").exception("Rule crashed.")
    finally:
        logging.getLogger("instantly_audit").handlers.clear()
    text = tty.getvalue()
    first = text.splitlines()[0]
    assert re.match(
        r"\d\d:\d\d:\d\d \x1b\[33mwarning\s*\x1b\[0m rules: Alert raised\.  workspace=ws-1 rule=<redacted>", first
    )
    assert "Traceback" in text and CANARY not in text


def test_auto_is_json_when_not_a_tty() -> None:
    """format auto writes JSON to a pipe or file; console forces plain lines without colour."""
    buf = io.StringIO()
    setup_logging("auto", "INFO", buf)
    get_logger("x").info("Hello.")
    assert orjson.loads(buf.getvalue())["msg"] == "Hello."
    plain = io.StringIO()
    setup_logging("console", "INFO", plain)
    get_logger("x").info("Hello.")
    logging.getLogger("instantly_audit").handlers.clear()
    assert "\x1b[" not in plain.getvalue() and " x: Hello." in plain.getvalue()
