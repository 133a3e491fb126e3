"""The audit-log cursor: order check, when a full re-read is due, threshold, and state compatibility."""

from __future__ import annotations

from typing import Any

import orjson

from connectors.instantly.audit_cursor import AuditCursor, last_page_id, page_is_ascending
from pipeline.clock import format_time

OVERLAP = 3600.0


def rec(rid: str, ts: float = 1_780_000_000.0) -> dict[str, Any]:
    return {"id": rid, "timestamp": format_time(ts)}


def test_page_order_check() -> None:
    """Ids must increase within the page and after `starting_after`; 3+ falling timestamps are descending."""
    assert page_is_ascending([rec("a"), rec("b"), rec("c")], None)
    assert page_is_ascending([rec("b")], "a")
    assert page_is_ascending([], "z")
    assert not page_is_ascending([rec("b"), rec("a")], None)
    assert not page_is_ascending([rec("a")], "a")  # starting_after must not come back
    assert not page_is_ascending([rec("b")], "c")
    falling = [rec("a", 300.0), rec("b", 200.0), rec("c", 100.0)]
    assert not page_is_ascending(falling, None)
    assert page_is_ascending(falling[:2], None)  # one late record after a newer one is normal
    assert page_is_ascending([rec("a"), {"timestamp": format_time(0)}, rec("b")], None)  # no id: ignored
    assert last_page_id([rec("a"), rec("b"), {"x": 1}]) == "b"
    assert last_page_id([{"x": 1}]) is None


def test_full_read_due() -> None:
    """Due without last_id or last_full_read, after `overlap` seconds, or when the process started since."""
    now = 1_780_000_000.0
    assert AuditCursor().full_read_due(now=now, overlap_secs=OVERLAP)
    cur = AuditCursor(last_id="x", last_full_read=now - 10)
    assert not cur.full_read_due(now=now, overlap_secs=OVERLAP)
    assert not cur.full_read_due(now=now, overlap_secs=OVERLAP, started_at=now - 10)
    assert cur.full_read_due(now=now, overlap_secs=OVERLAP, started_at=now - 5)
    assert cur.full_read_due(now=now + OVERLAP - 10, overlap_secs=OVERLAP)
    assert AuditCursor(last_id="x").full_read_due(now=now, overlap_secs=OVERLAP)
    assert AuditCursor(last_full_read=now).full_read_due(now=now, overlap_secs=OVERLAP)


def test_threshold_keeps_the_window_of_the_last_full_read() -> None:
    """Between full re-reads the threshold stays at the mark of the last one; ids above it stay seen."""
    cur = AuditCursor(high_water=1000.0)
    cur.finish_full_read(now=1000.0, last_id="x", overlap_secs=100.0)
    assert cur.full_mark == 1000.0 and cur.threshold(100.0) == 900.0
    cur.mark([("a", 950.0), ("b", 1040.0)])
    cur.advance(1050.0, now=1100.0, overlap_secs=100.0)
    assert cur.high_water == 1050.0 and cur.threshold(100.0) == 900.0 and set(cur.seen) == {"a", "b"}
    cur.finish_full_read(now=1100.0, last_id="y", overlap_secs=100.0)
    assert cur.threshold(100.0) == 950.0 and set(cur.seen) == {"a", "b"}
    cur.advance(None, now=1200.0, overlap_secs=100.0)
    cur.finish_full_read(now=1200.0, last_id=None, overlap_secs=10.0)
    assert set(cur.seen) == {"b"} and cur.last_id is None
    assert cur.last_full_read == 1100.0  # not confirmed ascending: the next poll reads the window anyway


def test_state_round_trip_and_old_state() -> None:
    """New fields survive a round trip; state without them loads and makes a full re-read due."""
    cur = AuditCursor(high_water=5.0, seen={"a": 5.0}, last_id="a", last_full_read=6.0, full_mark=5.0)
    back = AuditCursor.from_bytes(cur.to_bytes())
    assert back == cur
    assert orjson.loads(cur.to_bytes())["v"] == 1  # older pollers can still read it
    old = orjson.dumps({"v": 1, "high_water": 5.0, "floor": None, "seen": {"a": 5.0}})
    loaded = AuditCursor.from_bytes(old)
    assert loaded.seen == {"a": 5.0} and loaded.high_water == 5.0
    assert loaded.last_id is None and loaded.last_full_read is None and loaded.full_mark is None
    assert loaded.full_read_due(now=7.0, overlap_secs=OVERLAP)
    assert loaded.threshold(1.0) == 4.0
    junk = orjson.dumps({"v": 1, "high_water": 5.0, "last_id": 3, "last_full_read": "x", "full_mark": True})
    loaded = AuditCursor.from_bytes(junk)
    assert loaded.last_id is None and loaded.last_full_read is None and loaded.full_mark is None
