"""The poller's log at the default level says what changed: a quiet poll logs ``Poll finished.`` at DEBUG,
one that published, failed or recovered at INFO, and ``Polls summary.`` keeps each workspace visible at INFO
at most once every 10 minutes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from connectors.instantly.poll_log import SUMMARY_EVERY_SECS, PollLog
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_late_inserts import pipeline_logs
from tests.unit.test_instantly_source import audit_record, make_poller, seed

QUIET = {"audit_logs": 0, "api_keys": 0, "pipeline": 0}


def _lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg]


def test_only_polls_that_changed_something_are_info(caplog: pytest.LogCaptureFixture) -> None:
    """First poll, published, failed, recovered: INFO; a quiet poll: DEBUG, with the same fields."""
    clock = FakeClock()
    plog = PollLog("acme", clock)
    outcomes = [
        (QUIET, {}, logging.INFO),  # the first poll: the workspace answers
        (QUIET, {}, logging.DEBUG),
        ({**QUIET, "audit_logs": 3}, {}, logging.INFO),
        (QUIET, {"api_keys": "failed: HTTP 503 (UpstreamError)"}, logging.INFO),
        (QUIET, {}, logging.INFO),  # recovered
        (QUIET, {}, logging.DEBUG),
        ({**QUIET, "pipeline": 1}, {}, logging.INFO),  # e.g. pipeline.stream_recovered
    ]
    with pipeline_logs(caplog, logging.DEBUG):
        for counts, failed, _ in outcomes:
            clock.advance(5)
            plog.finished("ws-1", counts, failed)
    lines = _lines(caplog, "Poll finished.")
    assert [r.levelno for r in lines] == [level for *_, level in outcomes]
    assert all(r.__dict__["source"] == "acme" and r.__dict__["workspace"] == "ws-1" for r in lines)
    assert lines[2].__dict__["published"] == {**QUIET, "audit_logs": 3}
    assert lines[3].__dict__["failed"] == ["api_keys"]  # stream names only: the reasons are in status
    assert "failed" not in lines[4].__dict__
    assert _lines(caplog, "Polls summary.") == []  # 35 s in: no summary yet


def test_a_summary_at_most_every_ten_minutes_with_what_happened_since(caplog: pytest.LogCaptureFixture) -> None:
    """A quiet workspace polled every 5 s: one INFO summary per 10 minutes, counting polls, failures, records."""
    clock = FakeClock()
    plog = PollLog("acme", clock)
    with pipeline_logs(caplog, logging.INFO):
        for i in range(int(2 * SUMMARY_EVERY_SECS / 5) + 1):  # 20 minutes and one poll
            clock.advance(5)
            failed = {"api_keys": "failed: timeout"} if i == 10 else {}
            plog.finished("ws-1", {**QUIET, "audit_logs": 2} if i == 50 else QUIET, failed)
    summaries = _lines(caplog, "Polls summary.")
    assert len(summaries) == 2
    first = summaries[0].__dict__
    assert summaries[0].levelno == logging.INFO
    assert first["polls"] == SUMMARY_EVERY_SECS / 5 and first["failed_polls"] == 1
    assert first["published"] == {"audit_logs": 2} and first["since_secs"] == SUMMARY_EVERY_SECS
    assert summaries[1].__dict__["published"] == {} and summaries[1].__dict__["failed_polls"] == 0
    # the first poll, the published one, the failed one and its recovery: 4 INFO lines in 20 minutes
    assert len(_lines(caplog, "Poll finished.")) == 4


async def test_the_poller_logs_a_quiet_poll_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real poller against the fake API: its first poll and one that read a new audit record are
    INFO; a poll in between that found nothing new is DEBUG."""
    fake = FakeInstantly()
    seed(fake)
    clock = FakeClock()
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus, make_poller(fake, bus, clock) as poller:
        with pipeline_logs(caplog, logging.DEBUG):
            await poller.poll_once()
            clock.advance(5)
            quiet = await poller.poll_once()
            clock.advance(5)
            fake.audit = [audit_record("a1", clock.now() - 1)]
            await poller.poll_once()
    assert not any(quiet.values()), quiet
    lines = _lines(caplog, "Poll finished.")
    assert [r.levelno for r in lines] == [logging.INFO, logging.DEBUG, logging.INFO]
    assert lines[2].__dict__["published"]["audit_logs"] == 1
