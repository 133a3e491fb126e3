"""``instantly-audit simulate --write-config``: it replaces its own config, never someone else's."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import connectors.instantly.sim_cli as sim_cli
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main

REAL_CONFIG = "bus: {type: sqlite, path: data/bus.db}\nworkspaces:\n  prod: {api_key: ${INSTANTLY_KEY}}\n"


@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``serve`` that only calls ``on_ready`` with fake keys (the port is bound, never served); returns the
    base URLs served."""
    served: list[str] = []

    async def serve(
        host: str, port: int, scenario: Any, seed: int, *, on_ready: Any, agency: int, sock: socket.socket
    ) -> None:
        url = f"http://{host}:{sock.getsockname()[1]}"
        world = SimpleNamespace(workspace=SimpleNamespace(id="ws-1", name="Acme Outreach"),
                                poller_key=SimpleNamespace(key="poller-fake"))  # fmt: skip
        on_ready(SimpleNamespace(base_url=url, world=world, admin_key=SimpleNamespace(key="adm")))
        served.append(url)

    monkeypatch.setattr(sim_cli, "serve", serve)
    return served


def test_a_foreign_file_is_not_replaced(
    tmp_path: Path, fake_serve: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing config the simulator did not write: one line, exit 2, nothing written, no server."""
    cfg = tmp_path / "instantly-audit.yaml"
    cfg.write_text(REAL_CONFIG)
    (tmp_path / sim_cli.POLLER_KEY_FILE).write_text("real-key\n")
    assert main(["simulate", "--write-config", str(cfg)]) == Exit.USAGE
    err = capsys.readouterr().err.strip()
    assert "refusing to replace" in err and "--force" in err and len(err.splitlines()) == 1
    assert cfg.read_text() == REAL_CONFIG and (tmp_path / sim_cli.POLLER_KEY_FILE).read_text() == "real-key\n"
    assert fake_serve == []


def test_its_own_file_is_replaced_and_force_replaces_any(tmp_path: Path, fake_serve: list[str]) -> None:
    """A config the simulator wrote (its header) is rewritten on the next start; ``--force`` replaces any file."""
    cfg = tmp_path / "sim" / "instantly-audit.yaml"
    assert main(["simulate", "--port", "0", "--write-config", str(cfg)]) == Exit.OK
    assert cfg.read_text().startswith(sim_cli.CONFIG_HEADER) and f"base_url: {fake_serve[-1]}" in cfg.read_text()
    assert main(["simulate", "--port", "0", "--write-config", str(cfg)]) == Exit.OK
    assert f"base_url: {fake_serve[-1]}" in cfg.read_text() and fake_serve[0] != fake_serve[1]
    cfg.write_text(REAL_CONFIG)
    assert main(["simulate", "--port", "0", "--write-config", str(cfg), "--force"]) == Exit.OK
    assert f"base_url: {fake_serve[-1]}" in cfg.read_text()
    assert (cfg.parent / sim_cli.ADMIN_KEY_FILE).read_text() == "adm\n"


def test_hints_name_the_executable_as_it_can_be_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``make demo`` ``instantly-audit`` is not on PATH: the hint names ``.venv/bin/instantly-audit``
    (relative under the working directory, else absolute); a bare name found on PATH stays bare."""
    from pipeline.cli.base import program_name

    exe = tmp_path / ".venv" / "bin" / "instantly-audit"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert program_name(str(exe), cwd=str(tmp_path)) == ".venv/bin/instantly-audit"
    assert program_name(str(exe), cwd="/") == str(exe)
    assert program_name("instantly-audit") == "instantly-audit"
    monkeypatch.setenv("PATH", str(exe.parent))
    assert program_name(str(exe), cwd="/") == "instantly-audit"
    assert program_name("/x/pipeline/cli/__main__.py").endswith("-m pipeline.cli")


def test_demo_hint_says_the_bus_is_gone_and_how_to_keep_it(tmp_path: Path) -> None:
    """Without ``--workdir`` the demo's bus is deleted at exit: the hint says so and offers ``--workdir DIR``
    instead of pointing at a path that no longer exists; every command in it starts with the real executable."""
    from connectors.instantly.demo import _bus_line, next_steps

    gone = next_steps(".venv/bin/instantly-audit", None)
    assert ".venv/bin/instantly-audit demo --workdir DIR" in gone
    assert "Next: [bold].venv/bin/instantly-audit simulate" in gone and "[bold]instantly-audit" not in gone
    assert "deleted at exit" in _bus_line(tmp_path, kept=False) and str(tmp_path) not in _bus_line(tmp_path, kept=False)
    assert str(tmp_path / "bus.db") in next_steps("instantly-audit", tmp_path)
    assert _bus_line(tmp_path, kept=True) == f"bus: {tmp_path / 'bus.db'}"


def test_demo_event_line_without_a_target_has_no_double_space() -> None:
    """Audit record 37 names no key: the line read ``audit.api_key_created  by Dana Whitfield``."""
    from connectors.instantly.demo import _event_line

    actor = {"user_name": "Dana Whitfield", "ip": "185.220.101.47", "via_api": True}
    e = {"type": "audit.api_key_created", "time": "2026-12-08T01:02:13.000Z", "target": None, "actor": actor}
    assert (
        _event_line(e) == "[dim]01:02:13[/] [cyan]audit.api_key_created[/] by Dana Whitfield from 185.220.101.47 (API)"
    )


def test_simulate_banner_uses_the_real_executable() -> None:
    """``simulate``'s "Next:" line names the executable as it can be typed."""
    world = SimpleNamespace(workspace=SimpleNamespace(id="w", name="A"), poller_key=SimpleNamespace(key="p"))
    r = SimpleNamespace(base_url="http://127.0.0.1:1", world=world, admin_key=SimpleNamespace(key="a"))
    text = sim_cli.banner(r, Path("sim/x.yaml"), ".venv/bin/instantly-audit")  # type: ignore[arg-type]
    assert "Next: .venv/bin/instantly-audit run -c sim/x.yaml --once" in text


def test_a_busy_port_is_said_before_any_other_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``simulate`` on a busy port binds first: one line, exit 1, at once — the simulator (its world, the
    written config) is never started (it bound inside ``serve``, after the rest was set up)."""
    started: list[str] = []

    async def serve(*args: Any, **kwargs: Any) -> None:
        started.append("serve")

    monkeypatch.setattr(sim_cli, "serve", serve)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        code = main(["simulate", "--port", str(port), "--write-config", str(tmp_path / "sim.yaml")])
        took = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert (
        code == Exit.FINDINGS and err == f"error: port {port} on 127.0.0.1 is already in use; pick another with --port"
    )
    assert started == [] and not (tmp_path / "sim.yaml").exists() and took < 2.0
