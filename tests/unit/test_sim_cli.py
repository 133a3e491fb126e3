"""``instantly-audit simulate --write-config``: it replaces its own config, never someone else's."""

from __future__ import annotations

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
    """``serve`` that only calls ``on_ready`` with fake keys (no port opened); returns the base URLs served."""
    served: list[str] = []

    async def serve(host: str, port: int, scenario: Any, seed: int, *, on_ready: Any, agency: int) -> None:
        world = SimpleNamespace(workspace=SimpleNamespace(id="ws-1", name="Acme Outreach"),
                                poller_key=SimpleNamespace(key="poller-fake"))  # fmt: skip
        on_ready(SimpleNamespace(base_url=f"http://{host}:{port}", world=world, admin_key=SimpleNamespace(key="adm")))
        served.append(f"http://{host}:{port}")

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
    assert main(["simulate", "--port", "1", "--write-config", str(cfg)]) == Exit.OK
    assert cfg.read_text().startswith(sim_cli.CONFIG_HEADER) and "127.0.0.1:1" in cfg.read_text()
    assert main(["simulate", "--port", "2", "--write-config", str(cfg)]) == Exit.OK
    assert "127.0.0.1:2" in cfg.read_text()
    cfg.write_text(REAL_CONFIG)
    assert main(["simulate", "--port", "3", "--write-config", str(cfg), "--force"]) == Exit.OK
    assert "127.0.0.1:3" in cfg.read_text() and (cfg.parent / sim_cli.ADMIN_KEY_FILE).read_text() == "adm\n"
