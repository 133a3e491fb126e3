"""``webhooks check`` against the Instantly simulator: findings, formats, exit codes, no secrets printed."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.instantly.sim import InstantlySimulator
from connectors.instantly.webhooks_cli import EXIT_FAILED, EXIT_FINDINGS, EXIT_OK, register
from pipeline.errors import ConfigError
from tests.unit.test_webhook_support import SECRET_A

HOOK_HEADER_VALUE = "hdr-value-canary-5a1f9e0c2b7d"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instantly-audit")
    register(p.add_subparsers(dest="command"))
    return p


async def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = parser().parse_args(argv)
    code = await asyncio.to_thread(args.func, args)
    return code, capsys.readouterr().out


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    """A simulator with one workspace, four webhooks and a config file pointing at it."""
    async with InstantlySimulator() as sim:
        ws = sim.add_workspace("Acme Outreach")
        key = sim.add_api_key(ws.id)
        st = sim.state
        good = st.create_webhook(
            ws.id,
            "https://hooks.acme.example/hooks/crm",
            fields={"name": "good", "headers": {"X-Webhook-Secret": HOOK_HEADER_VALUE}},
        )
        plain = st.create_webhook(ws.id, "http://hooks.acme.example/other?token=abc123secret", fields={"name": "plain"})
        broken = st.create_webhook(
            ws.id,
            "https://hooks.acme.example/x",
            fields={"name": "broken", "headers": {"Authorization": HOOK_HEADER_VALUE}},
        )
        st.mark_webhook_error(broken.id)
        wrong = st.create_webhook(
            ws.id,
            "https://hooks.acme.example/hooks/crm",
            fields={"name": "wrong", "headers": {"X-Other": HOOK_HEADER_VALUE}},
        )
        monkeypatch.setenv("SIM_KEY", key.key)
        monkeypatch.setenv("HOOK_A", SECRET_A)
        monkeypatch.setenv("BAD_KEY", "revoked-" + key.key[:12])
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"""
workspaces:
  acme:
    api_key: ${{SIM_KEY}}
    base_url: {sim.url}
    max_retries: 0
  broken_key:
    api_key: ${{BAD_KEY}}
    base_url: {sim.url}
    max_retries: 0
webhook:
  sources:
    crm:
      workspace_id: {ws.id}
      secrets: ["${{HOOK_A}}"]
"""
        )
        yield {
            "cfg": str(cfg),
            "key": key.key,
            "ids": {"good": good.id, "plain": plain.id, "broken": broken.id, "wrong": wrong.id},
        }


async def test_json_report_flags_each_weakness(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Each webhook gets the findings the rules use; exit 3 when any exist; no header value or key printed."""
    code, out = await run(
        ["webhooks", "check", "--config", world["cfg"], "--workspace", "acme", "--format", "json"], capsys
    )
    assert code == EXIT_FINDINGS
    doc = orjson.loads(out)
    hooks = {h["id"]: h for h in doc["workspaces"][0]["webhooks"]}
    ids = world["ids"]
    assert hooks[ids["good"]]["findings"] == []
    assert hooks[ids["plain"]]["findings"] == ["no_auth_header", "insecure_url"]
    assert hooks[ids["broken"]]["findings"] == ["in_error"]
    assert hooks[ids["wrong"]]["findings"] == ["receiver_header_missing"]
    assert hooks[ids["good"]]["header_names"] == ["X-Webhook-Secret"]
    assert doc["summary"] == {"webhooks": 4, "with_findings": 3, "failed_workspaces": []}
    for leak in (HOOK_HEADER_VALUE, world["key"], "abc123secret", SECRET_A):
        assert leak not in out


async def test_table_report(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The table lists every webhook with its findings and a summary line."""
    code, out = await run(["webhooks", "check", "--config", world["cfg"], "--workspace", "acme"], capsys)
    assert code == EXIT_FINDINGS
    assert "no_auth_header,insecure_url" in out and "in_error" in out and "4 webhook(s), 3 with findings" in out
    assert HOOK_HEADER_VALUE not in out and world["key"] not in out


async def test_clean_workspace_exits_0(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A workspace whose webhooks are all fine exits 0."""
    async with InstantlySimulator() as sim:
        ws = sim.add_workspace("Clean")
        key = sim.add_api_key(ws.id)
        sim.state.create_webhook(ws.id, "https://x.example/h", fields={"headers": {"X-Webhook-Secret": "v"}})
        cfg = tmp_path / "clean.yaml"
        cfg.write_text(f"workspaces:\n  clean:\n    api_key_file: key\n    base_url: {sim.url}\n")
        (tmp_path / "key").write_text(key.key)
        code, out = await run(["webhooks", "check", "--config", str(cfg)], capsys)
    assert code == EXIT_OK and "1 webhook(s), 0 with findings" in out


async def test_api_failure_is_reported_per_workspace(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A workspace whose key is refused is reported as failed (exit 1); the others are still checked."""
    code, out = await run(["webhooks", "check", "--config", world["cfg"], "--format", "json"], capsys)
    assert code == EXIT_FAILED
    doc = orjson.loads(out)
    assert doc["summary"]["failed_workspaces"] == ["broken_key"]
    assert "AuthError" in doc["workspaces"][1]["error"]
    assert len(doc["workspaces"][0]["webhooks"]) == 4
    assert world["key"] not in out


async def test_unknown_workspace_is_a_config_error(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--workspace must name a configured workspace."""
    with pytest.raises(ConfigError, match="'nope' is not in the config's workspaces"):
        await run(["webhooks", "check", "--config", world["cfg"], "--workspace", "nope"], capsys)
