"""The embedded bus's files: one writer process, private modes, no symlinks followed."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus.base import EVENTS_TOPIC, OutRecord, iter_records
from pipeline.bus.sqlite import SqliteBus
from pipeline.errors import BusCorruptError, BusError

ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pipeline.bus.sqlite import SqliteBus
    from pipeline.bus.base import EVENTS_TOPIC, OutRecord

    async def main() -> None:
        async with SqliteBus(sys.argv[1]) as bus:
            await bus.publish([OutRecord(EVENTS_TOPIC, b"from-holder")])
            print("ready", flush=True)
            sys.stdin.readline()  # hold the bus until the test says stop

    asyncio.run(main())
    """
)

SECOND = textwrap.dedent(
    """
    import asyncio, sys
    from pipeline.bus.sqlite import SqliteBus
    from pipeline.errors import BusError

    async def main() -> int:
        try:
            async with SqliteBus(sys.argv[1]):
                return 0
        except BusError as err:
            print(err)
            return 2

    sys.exit(asyncio.run(main()))
    """
)


def _python(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, text=True, **kw
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process that holds the bus at ``tmp_path/data/bus.db`` open for writing."""
    path = tmp_path / "data" / "bus.db"
    with _python(HOLDER, str(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0


def test_a_second_writer_process_is_refused_with_the_holders_pid(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    path = tmp_path / "data" / "bus.db"
    with _python(SECOND, str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as second:
        out, err = second.communicate(timeout=30)
    assert second.returncode == 2, err
    assert out.strip().splitlines() == [f"bus {path} is in use by pid {holder.pid} (another `instantly-audit run`?)"]


async def test_a_reader_process_is_not_blocked_by_the_writer(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    bus = SqliteBus(tmp_path / "data" / "bus.db", read_only=True)
    async with bus, bus.consumer([EVENTS_TOPIC], start="earliest") as c:
        values = [r.value async for batch in iter_records(c) for r in batch]
    assert values == [b"from-holder"]


async def test_the_lock_is_released_on_close_and_shared_within_a_process(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    async with SqliteBus(path) as first, SqliteBus(path) as second:  # one process: the pipeline's parts share it
        await first.publish([OutRecord(EVENTS_TOPIC, b"a")])
        await second.publish([OutRecord(EVENTS_TOPIC, b"b")])
    with _python(SECOND, str(path), stdout=subprocess.PIPE) as proc:
        proc.communicate(timeout=30)
    assert proc.returncode == 0


async def test_bus_files_are_private_and_new_directories_are_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "bus.db"
        async with SqliteBus(path) as bus:
            await bus.publish([OutRecord(EVENTS_TOPIC, b"x")])
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert {"bus.db", "bus.db-wal", "bus.db-shm", "bus.db.lock"} <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.parametrize("link", ["bus.db", "bus.db-wal", "bus.db-shm", "bus.db.lock"])
async def test_a_symlink_at_the_bus_path_or_its_side_files_is_refused(tmp_path: Path, link: str) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / link).symlink_to(target)
    with pytest.raises(BusError, match="symbolic link"):
        async with SqliteBus(tmp_path / "bus.db"):
            pass
    assert target.read_bytes() == b""


async def test_a_dangling_symlink_is_not_followed_to_create_a_file(tmp_path: Path) -> None:
    (tmp_path / "bus.db").symlink_to(tmp_path / "created-through-link")
    with pytest.raises(BusError, match="symbolic link"):
        async with SqliteBus(tmp_path / "bus.db"):
            pass
    assert not (tmp_path / "created-through-link").exists()


def test_a_second_run_says_who_holds_the_bus_in_one_line(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    """``instantly-audit run`` on a bus another process writes: one line naming the holder's pid, rc 1."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{type: sqlite, path: {tmp_path / 'data' / 'bus.db'}}}\n"
        "workspaces:\n  acme: {api_key: '${BUS_LOCK_TEST_KEY}', name: Acme, base_url: 'http://127.0.0.1:9'}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BUS_LOCK_TEST_KEY": "k" * 36}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "run", "-c", str(config), "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"bus error: bus {tmp_path / 'data' / 'bus.db'} is in use by pid {holder.pid} (another `instantly-audit run`?)"
    ]


class _FullDisk(sqlite3.Connection):
    """A connection on a full device: the first write (switching to WAL) fails as SQLite reports it."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("PRAGMA journal_mode"):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


async def test_a_full_disk_is_not_reported_as_a_corrupt_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_FULL at open says the disk is full and the file undamaged — never "not a valid SQLite bus",
    which would invite an operator to delete the bus."""
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real_connect(*a, **kw, factory=_FullDisk))
    path = tmp_path / "data" / "bus.db"
    with pytest.raises(BusError) as info:
        async with SqliteBus(str(path)):
            pass
    assert not isinstance(info.value, BusCorruptError)
    assert f"cannot write the bus {path}: disk full / I/O error (the bus file is not damaged" in str(info.value)
    assert "not a valid SQLite bus" not in str(info.value)


@pytest.mark.parametrize(
    ("err", "disk"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.DatabaseError("file is not a database"), False),
        (sqlite3.OperationalError("no such table: meta"), False),
    ],
)
def test_disk_errors_are_told_from_damage(err: sqlite3.Error, disk: bool) -> None:
    """The classifier reads SQLite's (extended) error code when it has one, else its message."""
    from pipeline.bus.sqlite_format import is_disk_error

    assert is_disk_error(err) is disk
    coded = sqlite3.OperationalError("unrelated words")
    coded.sqlite_errorcode = sqlite3.SQLITE_IOERR | (4 << 8)  # SQLITE_IOERR_SHORT_READ
    assert is_disk_error(coded)
