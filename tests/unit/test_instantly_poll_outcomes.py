"""What a poll records when ``GET /workspaces/current`` goes wrong: a 401, a 200 whose body is an error.

Real poller against the aiohttp fake of the documented Instantly shapes, the embedded bus, and
the real ``instantly-audit status`` command reading what the poller wrote.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.main import main
from pipeline.clock import FakeClock
from pipeline.sources.base import status_key
from tests.unit.test_instantly_fake_api import FakeInstantly, serve
from tests.unit.test_instantly_late_inserts import pipeline_logs
from tests.unit.test_instantly_source import audit_record, events, make_poller, seed

KEY_ENV = "POLL_OUTCOME_TEST_KEY"


def status_of(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``instantly-audit status --format json`` for the workspace ``acme`` on ``tmp_path/bus.db``."""
    cfg = tmp_path / "c.yaml"
    bus = f"bus:\n  type: sqlite\n  path: {tmp_path}/bus.db\n"
    cfg.write_text(f"{bus}workspaces:\n  acme:\n    api_key: ${{{KEY_ENV}}}\n")
    monkeypatch.setenv(KEY_ENV, "not-used-by-status-123456")
    capsys.readouterr()
    assert main(["status", "--config", str(cfg), "--format", "json"]) == 0
    (acme,) = [w for w in orjson.loads(capsys.readouterr().out)["workspaces"] if w["source_id"] == "acme"]
    return dict(acme)


async def _poll(tmp_path: Path, fake: FakeInstantly, clock: FakeClock, *, revoke_after_first: bool) -> None:
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock) as poller:
            if revoke_after_first:
                await poller.poll_once()
                clock.advance(60)
                fake.revoked = True
            counts = await poller.poll_once()
            assert counts["pipeline"] == 1  # pipeline.poller_unauthorized, as before
        assert [e["type"] for e in await events(bus)][-1] == "pipeline.poller_unauthorized"
        doc = orjson.loads((await bus.state_items())[status_key("acme")])
        assert doc["at"] == clock.now()
        assert doc["failures"]["workspace"].startswith("refused: HTTP 401 (AuthError): Instantly refused the API key")
        assert doc["failures"]["audit_logs"].startswith("refused: HTTP 401 (AuthError): Instantly refused the API key")


def test_a_401_on_the_first_poll_is_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key refused from the start: ``status`` shows the failed poll with the 401, not ``never``."""
    fake = FakeInstantly()
    fake.revoked = True
    asyncio.run(_poll(tmp_path, fake, FakeClock(), revoke_after_first=False))
    acme = status_of(tmp_path, capsys, monkeypatch)
    assert acme["last_poll"].startswith("failed: ") and "HTTP 401" in acme["last_poll"]
    assert acme["last_poll_age_secs"] is not None and acme["cursor_age_secs"] is None


def test_a_key_revoked_later_moves_the_last_poll_and_keeps_the_cursor_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After good polls, a 401 is the last poll (not the last good one forever); the cursor age stays
    that of the last good audit read."""
    fake = FakeInstantly()
    seed(fake)
    clock = FakeClock()
    fake.audit = [audit_record("a1", clock.now() - 30)]
    good = clock.now()
    asyncio.run(_poll(tmp_path, fake, clock, revoke_after_first=True))

    async def cursor_at() -> Any:
        async with SqliteBus(tmp_path / "bus.db") as bus:
            return orjson.loads((await bus.state_items())[status_key("acme")])["cursor_at"]

    assert asyncio.run(cursor_at()) == good
    acme = status_of(tmp_path, capsys, monkeypatch)
    assert "workspace refused: HTTP 401 (AuthError)" in acme["last_poll"]


ERROR_BODIES = [
    {"error": "ACC_UNKNOWN_ERROR"},
    {"statusCode": 500, "error": "Internal Server Error", "message": "oops"},
    {"name": "a workspace without its required id"},
]


@pytest.mark.parametrize("body", ERROR_BODIES)
async def test_workspace_answered_200_with_an_error_body_fails_like_a_5xx(tmp_path: Path, body: dict[str, Any]) -> None:
    """``GET /workspaces/current`` answering 200 with an error in the body (reference §1.3) is retried
    and fails the workspace stream for the poll; it is never diffed (no workspace.deleted, then no
    workspace.created when the real answer comes back) and the identity stays."""
    fake = FakeInstantly()
    seed(fake)
    clock = FakeClock()
    good = fake.workspace
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, streams=["workspace"]) as poller:
            assert (await poller.poll_once())["workspace"] == 1
            fake.workspace = body
            sent = len(fake.calls_to("/workspaces/current"))
            clock.advance(60)
            assert (await poller.poll_once())["workspace"] == 0
            assert len(fake.calls_to("/workspaces/current")) - sent == 2  # retried (max_retries=1)
            assert poller.last_failures["workspace"].startswith("failed: ")
            assert "HTTP 200 without the workspace's id" in poller.last_failures["workspace"]
            assert poller.workspace.id == good["id"]
            fake.workspace = good
            clock.advance(60)
            assert (await poller.poll_once())["workspace"] == 0
            assert poller.last_failures == {}
        assert [e["type"] for e in await events(bus)] == ["workspace.baseline"]


async def test_admin_endpoint_answered_200_with_an_error_body_publishes_no_removal(tmp_path: Path) -> None:
    """The other single object the poller diffs, ``GET /workspace-group-members/admin``: an error body at
    200 fails the group_members stream (no workspace_group.member_removed for the agency link)."""
    fake = FakeInstantly()
    clock = FakeClock()
    fake.admin_workspace = {"workspace_name": "Agency", "has_admin_workspace": True, "workspace_group_member_id": "l1"}
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, streams=["group_members"]) as poller:
            assert (await poller.poll_once())["group_members"] == 1
            fake.admin_workspace = {"error": "ACC_UNKNOWN_ERROR"}
            assert (await poller.poll_once())["group_members"] == 0
            assert "ACC_UNKNOWN_ERROR" in poller.last_failures["group_members"]
        assert [e["type"] for e in await events(bus)] == ["workspace_group.member_baseline"]


CANARY_KEY_ID = "019cc043-5eed-7c0d-9a11-cafe00c0ffee"
CANARY_TOKEN = "CANARYtok3nZZ9x8y7w6v5u4t3s2r1q0"
CANARY_INSTANTLY_KEY = base64.b64encode(f"{CANARY_KEY_ID}:{CANARY_TOKEN}".encode()).decode()


def pieces(secret: str, k: int = 12) -> set[str]:
    """Every run of ``k`` characters of ``secret`` that is not made of hex digits and dashes alone."""
    return {secret[i : i + k] for i in range(len(secret) - k + 1)} - {
        p for p in (secret[i : i + k] for i in range(len(secret) - k + 1)) if not p.strip("0123456789abcdef-:")
    }


def test_a_key_echoed_cut_by_the_server_leaves_no_piece_on_the_bus_or_in_the_logs(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 401 whose message quotes the key cut (first 24 characters, last 20, the decoded token's first
    16, a run across the decoded ``<uuid>:<token>``): no run of 12 of its characters reaches the bus file,
    the logs, the poll status or ``status``; the key's id (the uuid) stays readable."""
    key, decoded = CANARY_INSTANTLY_KEY, f"{CANARY_KEY_ID}:{CANARY_TOKEN}"
    fake = FakeInstantly(api_key=key)
    cut = f"{key[:24]} ... {key[-20:]} token {CANARY_TOKEN[:16]} for {decoded[20:52]}"
    fake.fail(
        "/workspaces/current", 401, times=5, message=f"Invalid authorization header {cut} (api key id {CANARY_KEY_ID})"
    )

    async def poll() -> dict[str, Any]:
        async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
            async with make_poller(fake, bus, FakeClock(), streams=["workspace", "audit_logs"]) as poller:
                assert (await poller.poll_once())["pipeline"] == 1
            [event] = await events(bus)
            return event

    with pipeline_logs(caplog, logging.DEBUG):
        event = asyncio.run(poll())
    message = event["attributes"]["message"]
    assert "HTTP 401" in message and CANARY_KEY_ID in message  # the key's id stays readable
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "pipeline.poller_unauthorized" in logged  # the logs were captured
    status = orjson.dumps(status_of(tmp_path, capsys, monkeypatch)).decode()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("bus.db*"))
    secret_pieces = pieces(key) | pieces(CANARY_TOKEN) | (pieces(decoded) - pieces(CANARY_KEY_ID))
    assert secret_pieces
    for piece in secret_pieces:
        assert piece not in message and piece not in logged and piece not in status, piece
        assert piece.encode() not in stored, piece


async def test_audit_record_at_a_leap_second_keeps_its_own_time(tmp_path: Path) -> None:
    """An audit record stamped ``…T23:59:60Z`` (valid RFC 3339) is published at ``23:59:59.999Z`` of
    its minute, not at the poll's observed_at."""
    fake = FakeInstantly()
    clock = FakeClock()
    fake.audit = [
        {**audit_record("leap1", clock.now() - 60), "timestamp": "2026-06-30T23:59:60.000Z"},  # Instantly's shape
        {**audit_record("leap2", clock.now() - 50), "timestamp": "2016-12-31T23:59:60Z"},
    ]
    async with serve(fake), SqliteBus(tmp_path / "bus.db") as bus:
        async with make_poller(fake, bus, clock, streams=["audit_logs"]) as poller:
            assert (await poller.poll_once())["audit_logs"] == 2
        evs = await events(bus)
    assert sorted(e["time"] for e in evs) == ["2016-12-31T23:59:59.999Z", "2026-06-30T23:59:59.999Z"]
