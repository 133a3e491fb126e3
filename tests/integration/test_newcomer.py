"""The newcomer path, scripted as a new user would take it after ``make demo``:
``simulate --write-config`` → ``config validate`` → ``run --once`` → ``replay --timeline <email>``
→ ``check``, each from a directory that is not the config's, asserting exit codes and key lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

CLI = [sys.executable, "-m", "pipeline.cli.main"]
SAM = "sam.ortiz@acme-outreach.com"  # a member of the simulator's demo workspace who logs in


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("INSTANTLY_AUDIT_CONFIG", None)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """``instantly-audit simulate --port 0 --write-config conf/instantly-audit.yaml``: (config, banner, key)."""
    config = tmp_path / "conf" / "instantly-audit.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [*CLI, "simulate", "--port", "0", "--write-config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Stop with Ctrl-C"):
                break
        banner = "".join(lines)
        key = re.search(r"poller key (\S+)", banner)
        assert key is not None, banner + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        yield config, banner, key.group(1)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # drains and closes the pipes


def test_newcomer_path_from_simulate_to_check(simulator: tuple[Path, str, str], tmp_path: Path) -> None:
    """Every step works as printed, from another directory, with the documented exit codes."""
    config, banner, key = simulator
    assert re.search(r"listening on http://127\.0\.0\.1:\d+/api/v2", banner)
    assert "workspace " in banner and "admin key" in banner and "FAKE" in banner
    assert f"config     {config}" in banner
    assert (config.parent / "simulator-poller.key").read_text().strip() == key
    assert oct((config.parent / "simulator-poller.key").stat().st_mode & 0o777) == "0o600"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    v = cli("config", "validate", str(config), cwd=elsewhere)
    assert v.returncode == 0, v.stderr
    assert ": ok — bus sqlite, 1 workspace, 1 sink(s)" in v.stdout

    run = cli("run", "-c", str(config), "--once", cwd=elsewhere)
    assert run.returncode == 0, run.stderr
    # Relative paths are the config's: the bus and the JSONL file live beside it, not in cwd.
    assert (config.parent / "data" / "bus.db").exists() and not (elsewhere / "data").exists()
    events = [orjson.loads(x) for x in (config.parent / "data" / "events.jsonl").read_bytes().splitlines()]
    assert any(e.get("type") == "api_key.baseline" for e in events)

    tl = cli("replay", "-c", str(config), "--timeline", SAM, "--format", "jsonl", "--since", "30d", cwd=elsewhere)
    assert tl.returncode == 0, tl.stderr
    touched = [orjson.loads(x) for x in tl.stdout.splitlines() if x.strip()]
    kinds = {e["type"] for e in touched}
    # The member snapshot (by email) and the audit records filed under the user id and name.
    assert "audit.user_login" in kinds, kinds
    assert any(k.startswith("member.") for k in kinds), kinds

    chk = cli("check", "-c", str(config), cwd=elsewhere)
    assert chk.returncode == 1, chk.stderr  # the demo world holds an all:all key: a finding
    assert "No all:all keys in production" in chk.stdout and "FAILING" in chk.stdout
    # The simulator's own poller key is what README asks for: check does not flag it (it held
    # webhook_events:read, which only the opt-in webhook_deliveries stream reads: "drop …").
    assert "holds exactly the read scopes it needs" in chk.stdout, chk.stdout
    assert key not in chk.stdout + chk.stderr + run.stdout + run.stderr + tl.stdout + tl.stderr


def test_simulate_on_a_busy_port_is_one_line(simulator: tuple[Path, str, str], tmp_path: Path) -> None:
    """A second simulator on the same port: one line, exit 1, no traceback."""
    _, banner, _ = simulator
    port = re.search(r"127\.0\.0\.1:(\d+)", banner)
    assert port is not None
    r = cli("simulate", "--port", port.group(1), cwd=tmp_path, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_once_exits_1_when_the_key_is_refused(simulator: tuple[Path, str, str], tmp_path: Path) -> None:
    """A revoked pipeline key (401) makes ``run --once`` exit 1 and say which workspace and stream."""
    config, _, _ = simulator
    (config.parent / "simulator-poller.key").write_text("bm90LWEta2V5Om5vLXN1Y2gta2V5\n")
    run = cli("run", "-c", str(config), "--once", cwd=tmp_path)
    assert run.returncode == 1
    assert "run --once: workspace acme: " in run.stderr and "refused: HTTP 401" in run.stderr
