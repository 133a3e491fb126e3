"""Replay's terminal table: alerts show severity and status, everything fits 80 columns, NO_COLOR holds."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pytest
from rich.console import Console

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.observability.logs import ConsoleFormatter
from pipeline.replay.table import print_table

SUMMARY = "API key 'ci-deploy' has scopes all:all (full access to the workspace, including API key management)"
ALERT: dict[str, Any] = {
    "rule": {"id": "api_key.all_scope", "severity": "critical"},
    "status": "open",
    "last_seen": "2026-03-01T00:00:00.000Z",
    "summary": SUMMARY,
    "entities": [{"kind": "api_key", "id": "k1", "name": "ci-deploy"}],
}
EVENT: dict[str, Any] = {
    "type": "api_key.created",
    "time": "2026-03-01T00:00:00.000Z",
    "actor": {"user_name": "Jane Doe"},
    "target": {"kind": "api_key", "id": "k1", "name": "ci-deploy"},
    "attributes": {"scopes": ["all:all", "leads:read", "campaigns:update", "accounts:read"], "name": "ci"},
}
COLOR_SGR = re.compile(r"\x1b\[[0-9;]*?(?:3[0-79]|9[0-7]|38;[0-9;]+)m")


def render(items: list[dict[str, Any]], topic: str, width: int) -> str:
    buf = io.StringIO()
    rec = Record(topic, 0, 0, 0, None, b"")
    print_table([(rec, b) for b in items], topic, console=Console(file=buf, width=width))
    return buf.getvalue()


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("width", [80, 160])
def test_alert_table_shows_severity_and_status_and_fits(width: int) -> None:
    """Severity and status are columns (a resolved alert reads resolved); no line passes the width; nothing is cut."""
    out = render([ALERT, {**ALERT, "status": "resolved"}], ALERTS_TOPIC, width)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    header = lines[0] if width < 100 else lines[1]
    assert all(col in header for col in ("time", "severity", "status", "rule", "summary"))
    assert "…" not in out
    rows = [line for line in lines if "api_key.all_scope" in line]
    assert "open" in rows[0] and "resolved" in rows[1] and all("critical" in r for r in rows)
    for word in SUMMARY.split():
        assert word in out, word


def test_event_table_wraps_instead_of_truncating_at_80_columns() -> None:
    """An event's long attribute list wraps (every scope readable) within 80 columns."""
    out = render([EVENT], EVENTS_TOPIC, 80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    for scope in ("scopes=all:all,", "leads:read,", "campaigns:update,", "accounts:read"):
        assert scope in out, scope
    assert "Jane Doe" in words(out) and "api_key.created" in out


def test_no_color_turns_colour_off_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the severity is coloured; with NO_COLOR set the same table has no colour codes."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    buf = io.StringIO()
    print_table([(Record(ALERTS_TOPIC, 0, 0, 0, None, b""), ALERT)], ALERTS_TOPIC, file=buf)
    assert COLOR_SGR.search(buf.getvalue())
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    print_table([(Record(ALERTS_TOPIC, 0, 0, 0, None, b""), ALERT)], ALERTS_TOPIC, file=buf)
    assert "critical" in buf.getvalue() and not COLOR_SGR.search(buf.getvalue())


def test_no_color_turns_colour_off_in_console_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console log formatter colours levels on a terminal unless NO_COLOR is set (not empty)."""
    record = logging.LogRecord("instantly_audit.x", logging.ERROR, __file__, 1, "boom", None, None)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" in ConsoleFormatter(color=True).format(record)
    monkeypatch.setenv("NO_COLOR", "")
    assert "\x1b[" in ConsoleFormatter(color=True).format(record)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in ConsoleFormatter(color=True).format(record)
