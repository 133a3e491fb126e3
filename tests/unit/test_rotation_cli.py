"""``instantly-audit keys rotate NAME`` from the command line and from the ``rotation`` config section."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.instantly import keys_cli
from connectors.instantly.rotation.destinations import FileDestination, VaultDestination
from connectors.instantly.sim import InstantlySimulator
from pipeline.cli import main as cli
from pipeline.config.base import EnvValue
from pipeline.config.loader import parse_config
from pipeline.errors import ConfigError
from tests.fakes.vault import FakeVault
from tests.unit.test_check_cli import ThreadedSim

NAME = "zapier"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A simulator workspace with pipeline, admin and zapier keys; a config file; keys_cli registered."""
    with ThreadedSim() as sim:
        ws = sim.add_workspace("Acme")
        pipeline = sim.add_api_key(ws.id, ["api_keys:read", "workspaces:read"], name="security-poller")
        admin = sim.add_api_key(ws.id, ["api_keys:all", "workspaces:read"], name="key-admin")
        old = sim.add_api_key(ws.id, ["leads:all"], name=NAME)
        (tmp_path / "pipeline.key").write_text(pipeline.key)
        (tmp_path / "admin.key").write_text(admin.key + "\n")
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "zapier").write_text(old.key)
        doc = {"workspaces": {"acme": {"api_key_file": "pipeline.key", "base_url": sim.url}}}
        (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(doc))
        yield {"sim": sim, "ws": ws.id, "dir": tmp_path, "old": old, "secrets": [pipeline.key, admin.key, old.key]}


def rotate(setup: dict[str, Any], *extra: str) -> list[str]:
    """argv for ``keys rotate zapier`` with the config, the admin key file and a journal under tmp."""
    d: Path = setup["dir"]
    return ["keys", "rotate", NAME, "--config", str(d / "pipeline.yaml"), "--admin-key-file", str(d / "admin.key"),
            "--journal", str(d / "journal.json"), *extra]  # fmt: skip


def named(sim: InstantlySimulator, ws: str) -> list[str]:
    """Live keys called NAME."""
    return [k.id for k in sim.state.api_keys_of(ws) if k.name == NAME]


def test_cli_rotation_with_confirm(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`keys rotate NAME --destination file:... --confirm` exits 0; the file (0600) holds the one live key."""
    dest = setup["dir"] / "secrets" / "zapier"
    code = cli.main(rotate(setup, "--destination", f"file:{dest}", "--confirm"))
    out, err = capsys.readouterr()
    assert code == 0, err
    (new_id,) = named(setup["sim"], setup["ws"])
    key = setup["sim"].state.api_keys[new_id]
    assert dest.read_text().strip() == key.key and stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    assert "done:" in out
    for s in [*setup["secrets"], key.key]:
        assert s not in out and s not in err and s not in (setup["dir"] / "journal.json").read_text()


def test_cli_destination_path_is_relative_to_the_working_directory(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--destination file:REL`` lands under the directory the command runs in, like every other
    command-line path (it was resolved against the config file's directory: ``file:sim/x`` with
    ``-c sim/cfg.yaml`` wrote ``sim/sim/x``)."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(rotate(setup, "--destination", "file:out/zapier.key", "--confirm")) == 0
    (new_id,) = named(setup["sim"], setup["ws"])
    assert (work / "out" / "zapier.key").read_text().strip() == setup["sim"].state.api_keys[new_id].key
    assert not (setup["dir"] / "out").exists()


def test_cli_dry_run_then_pending_then_confirm(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run changes nothing (0); --no-wait stops after storing (3); --confirm finishes (0)."""
    dest = f"file:{setup['dir'] / 'secrets' / 'zapier'}"
    assert cli.main(rotate(setup, "--destination", dest, "--dry-run")) == 0
    assert "Rotation plan" in capsys.readouterr().out
    assert named(setup["sim"], setup["ws"]) == [setup["old"].id]
    assert cli.main(rotate(setup, "--destination", dest, "--no-wait")) == keys_cli.EXIT_PENDING
    assert len(named(setup["sim"], setup["ws"])) == 2
    assert cli.main(rotate(setup, "--destination", dest, "--dry-run")) == 0
    assert "resumes at: confirmed" in capsys.readouterr().out
    assert cli.main(rotate(setup, "--destination", dest, "--confirm")) == 0
    assert len(named(setup["sim"], setup["ws"])) == 1


def test_cli_refuses_the_pipeline_key_as_admin(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """An admin key file holding the pipeline's key is a configuration error (exit 2), nothing changes."""
    (setup["dir"] / "admin.key").write_text((setup["dir"] / "pipeline.key").read_text())
    code = cli.main(rotate(setup, "--destination", f"file:{setup['dir'] / 'x'}", "--confirm"))
    assert code == 2 and "separate admin key" in capsys.readouterr().err
    assert named(setup["sim"], setup["ws"]) == [setup["old"].id]


def test_cli_needs_a_destination_and_an_admin_key(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Without a destination, or without any admin key source, the command stops with exit 2."""
    assert cli.main(rotate(setup)) == 2
    assert "--destination" in capsys.readouterr().err
    dropped = ("--admin-key-file", str(setup["dir"] / "admin.key"))
    argv = [a for a in rotate(setup, "--destination", "file:x") if a not in dropped]
    assert cli.main(argv) == 2
    assert "admin key" in capsys.readouterr().err


def test_cli_an_unreachable_instantly_names_the_host_and_setting(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """``keys rotate`` against a base_url nothing listens on said ``error: GET /api/v2/workspaces/current:
    request failed (ClientConnectorError)``; it adds the client's hint, with the workspace's alias."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = {"workspaces": {"acme": {"api_key_file": "pipeline.key", "base_url": f"http://127.0.0.1:{port}",
                                   "max_retries": 0}}}  # fmt: skip
    (setup["dir"] / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    code = cli.main(rotate(setup, "--destination", f"file:{setup['dir'] / 'x'}", "--confirm"))
    err = capsys.readouterr().err
    assert code == 1 and f"127.0.0.1:{port} refused the connection (workspaces.acme.base_url)" in err, err


def _args(**kw: Any) -> argparse.Namespace:
    base = {"name": NAME, "workspace": None, "scopes": None, "destination": None, "admin_key_file": None,
            "journal": None, "grace_period": None, "confirm": True, "no_wait": False, "dry_run": False}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_rotation_section_with_vault_admin_key_and_destination(setup: dict[str, Any]) -> None:
    """The `rotation` section (admin key and destination from Vault) drives a rotation that stores into Vault."""

    sim: InstantlySimulator = setup["sim"]
    admin_secret = setup["secrets"][1]
    with FakeVault() as vault:
        vault.put("secret", "instantly/admin", {"api_key": admin_secret})
        vault.put("secret", "instantly/zapier", {"api_key": setup["old"].key})
        tree = {
            "secret_managers": {"vault": {"url": vault.url, "token": EnvValue(vault.token)}},
            "rotation": {
                "admin_api_key_vault": "secret/instantly/admin#api_key",
                "journal_dir": str(setup["dir"] / "journals"),
                "keys": {NAME: {"workspace": "acme", "destination": "vault:secret/instantly/zapier#api_key"}},
            },
        }
        tree["secret_managers"] = {"vault": {"url": vault.url, "token": "${VT}"}}
        tree["workspaces"] = {"acme": {"api_key": "${K}", "base_url": sim.url}}
        cfg = parse_config(yaml.safe_dump(tree), env={"K": setup["secrets"][0], "VT": vault.token})
        rot = keys_cli.build_rotation(_args(), cfg, base_dir=setup["dir"])
        assert isinstance(rot.destination, VaultDestination)
        outcome = asyncio.run(rot.run())
        assert outcome.status == "done"
        (new_id,) = named(sim, setup["ws"])
        assert vault.current("secret", "instantly/zapier") == {"api_key": sim.state.api_keys[new_id].key}
        assert outcome.journal.parent == setup["dir"] / "journals"


def test_rotation_section_errors(setup: dict[str, Any]) -> None:
    """Invalid rotation settings name rotation.<key>; a vault destination needs secret_managers.vault."""
    ws = {"acme": {"api_key": "${K}"}}
    with pytest.raises(ConfigError, match=r"rotation\.grace_period_secs"):
        parse_config(yaml.safe_dump({"workspaces": ws, "rotation": {"grace_period_secs": -5}}), env={"K": "k"})
    no_vault = parse_config(
        yaml.safe_dump({"workspaces": ws, "rotation": {"admin_api_key": "${A}"}}), env={"K": "k", "A": "admin-secret-1"}
    )
    with pytest.raises(ConfigError, match=r"secret_managers\.vault"):
        keys_cli.build_rotation(_args(destination="vault:secret/a#b"), no_vault, base_dir=setup["dir"])
    rot = keys_cli.build_rotation(_args(destination="file:rel/key"), no_vault, base_dir=setup["dir"])
    # a --destination path is relative to the working directory, not to the config file (base_dir)
    assert isinstance(rot.destination, FileDestination) and rot.destination.path == Path.cwd() / "rel" / "key"
