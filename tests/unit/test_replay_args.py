"""``replay``'s time arguments and ``--workspace`` as a newcomer meets them: a zone-less time is UTC
(in any local zone) and the summary says the range used; a bad time is an argument error naming the
flag, not a "config error"; a ``--workspace`` that matches nothing and is neither a configured alias
nor a workspace id of the scanned range is said in one line."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.bus.base import EVENTS_TOPIC
from pipeline.cli.main import main
from pipeline.clock import format_time, parse_time
from schemas import Actor, Event, Source, Target, WorkspaceRef
from tests.conftest import make_bus

T0 = parse_time("2026-11-01T20:00:00Z")


def _config(tmp_path: Path) -> Path:
    doc = {
        "bus": {"type": "sqlite", "path": str(tmp_path / "bus.db")},
        "workspaces": {
            "alpha": {"api_key": "${REPLAY_ARGS_UNSET_KEY}"},
            "beta": {"api_key": "${REPLAY_ARGS_UNSET_KEY}"},
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _publish(tmp_path: Path) -> None:
    """Four events an hour apart (20:00 … 23:00 UTC), workspaces ws-a (not in the config: a sub-workspace) and ws-b."""

    async def go() -> None:
        async with make_bus({"type": "sqlite", "path": str(tmp_path / "bus.db")}) as bus, bus.transaction("t") as tx:
            for i in range(4):
                ws = WorkspaceRef("ws-a" if i % 2 else "ws-b")
                e = Event.build(
                    type="audit.user_login", time=format_time(T0 + i * 3600), observed_at=format_time(T0 + i * 3600),
                    workspace=ws, source=Source("audit_log", "s", f"r{i}"), natural_key=(f"r{i}",),
                    actor=Actor(user_id="u1"), target=Target("member", "t1", "n"), attributes={"activity_code": 1},
                )  # fmt: skip
                tx.send(EVENTS_TOPIC, e.to_json(), key=ws.id.encode())

    asyncio.run(go())


def _replay(cfg: Path, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["replay", "-c", str(cfg), "--format", "jsonl", "--no-progress", *args])
    out, err = capfd.readouterr()
    return code, [line for line in out.splitlines() if line.strip()], err


@pytest.fixture
def local_zone() -> Iterator[None]:
    """A local zone far from UTC: a zone-less time must still be UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.usefixtures("local_zone")
@pytest.mark.parametrize(
    "since", ["2026-11-01 21:00", "2026-11-01T21:00", "2026-11-01T21:00Z", "2026-11-01T22:00+01:00"]
)
def test_a_time_without_a_zone_is_utc_and_the_summary_says_the_range(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], since: str
) -> None:
    cfg = _config(tmp_path)
    _publish(tmp_path)
    code, out, err = _replay(cfg, capfd, "--since", since, "--until", "2026-11-01 23:00")
    assert code == 0 and len(out) == 2  # 21:00 and 22:00
    assert "event time 2026-11-01T21:00:00.000Z to 2026-11-01T23:00:00.000Z (UTC, end excluded)" in err
    code, out, err = _replay(cfg, capfd, "--since", since)
    assert "event time 2026-11-01T21:00:00.000Z to now (UTC, end excluded)" in err


def test_replay_help_says_times_without_a_zone_are_utc(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    assert "without Z or an offset, UTC" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--since", "21:00"], "argument --since: '21:00' is not a time: use 2026-11-01T21:00Z"),
     (["--until", "tomorrow"], "argument --until: 'tomorrow' is not a time"),
     (["--since", "2026-11-02", "--until", "2026-11-01"], "argument --until must be after --since")],
)  # fmt: skip
def test_a_bad_time_is_an_argument_error_naming_the_flag(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """It was ``config error: '21:00' is not a time…``, though the config was fine."""
    code, _, err = _replay(_config(tmp_path), capfd, *args)
    assert code == 2 and err.strip().splitlines() == [
        f"instantly-audit replay: error: {err.split('error: ', 1)[1].strip()}"
    ]
    assert needle in err and "config error" not in err


def test_gaps_reports_a_bad_time_as_an_argument_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["gaps", "-c", str(_config(tmp_path)), "--since", "21:00"]) == 2
    err = capfd.readouterr().err
    assert "instantly-audit gaps: error: argument --since: '21:00' is not a time" in err and "config error" not in err


def test_an_unknown_workspace_that_matches_nothing_is_said(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--workspace bogus`` gave "0 matched", exit 0, nothing else; ``check`` refuses it. Replay also
    takes ids the config does not name (sub-workspaces), so it says it in one line and exits 0."""
    cfg = _config(tmp_path)
    _publish(tmp_path)
    code, out, err = _replay(cfg, capfd, "--workspace", "bogus", "--workspace", "nope")
    assert code == 0 and out == []
    assert (
        "replay: --workspace 'bogus', 'nope': not a workspace of the config (known: alpha, beta) "
        "nor a workspace id in the scanned range"
    ) in err
    code, out, err = _replay(cfg, capfd, "--workspace", "ws-a")  # an id the config does not name: matches
    assert code == 0 and len(out) == 2 and "not a workspace of the config" not in err
    code, out, err = _replay(cfg, capfd, "--workspace", "beta")  # configured, never polled: no events, no complaint
    assert code == 0 and out == [] and "not a workspace of the config" not in err
    code, out, err = _replay(
        cfg, capfd, "--workspace", "ws-b", "--since", "2026-11-01T20:30Z", "--until", "2026-11-01T21:30Z"
    )
    assert code == 0 and out == [] and "not a workspace of the config" not in err  # seen in the range, filtered out


def test_dead_letters_are_filtered_by_when_they_failed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--topic deadletter --since``: a dead letter has no event time; it is filtered (and sorted)
    by ``failed_at`` — every letter was "0 matched" under any time filter."""
    from pipeline.bus.base import DEADLETTER_TOPIC
    from schemas.deadletter import build

    async def go() -> None:
        async with make_bus({"type": "sqlite", "path": str(tmp_path / "bus.db")}) as bus, bus.transaction("t") as tx:
            for i, hours_ago in enumerate((48, 2)):
                letter = build(stage="source", component="crm", component_type="instantly_webhook", reason="bad_shape",
                               error="bad_shape: no event_type", failed_at=format_time(time.time() - hours_ago * 3600),
                               value=f'{{"n": {i}}}'.encode(), stream="webhook_crm")  # fmt: skip
                tx.send(DEADLETTER_TOPIC, letter.to_json(), key=b"ws-a")

    asyncio.run(go())
    cfg = _config(tmp_path)
    code, lines, err = _replay(cfg, capfd, "--topic", "deadletter", "--since", "1d")
    assert code == 0 and len(lines) == 1 and '\\"n\\": 1' in lines[0], err
    code, lines, _ = _replay(cfg, capfd, "--topic", "deadletter", "--since", "3d")
    assert len(lines) == 2
