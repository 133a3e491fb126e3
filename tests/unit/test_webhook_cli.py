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
    """Each webhook gets the findings the rules use, with their severity; exit 1 for a high one; no header
    value or key printed."""
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
    assert [hooks[ids[n]]["severity"] for n in ("good", "plain", "broken", "wrong")] == [
        None,
        "high",
        "medium",
        "medium",
    ]
    assert doc["summary"] == {
        "webhooks": 4, "with_findings": 3, "failed_workspaces": [], "fail_on": "high", "exit_code": 1,
    }  # fmt: skip
    for leak in (HOOK_HEADER_VALUE, world["key"], "abc123secret", SECRET_A):
        assert leak not in out


async def test_table_report(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The table lists every webhook with its findings and a summary line."""
    code, out = await run(["webhooks", "check", "--config", world["cfg"], "--workspace", "acme"], capsys)
    assert code == EXIT_FINDINGS
    assert "no_auth_header,insecure_url" in out and "in_error" in out
    assert "4 webhook(s), 3 with findings — FAILING (--fail-on high)" in out
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
    """A workspace whose key is refused is reported as failed; the others are still checked (their high
    findings make the exit 1, as in ``check``: findings win over a part that could not run)."""
    code, out = await run(["webhooks", "check", "--config", world["cfg"], "--format", "json"], capsys)
    assert code == EXIT_FINDINGS
    doc = orjson.loads(out)
    assert doc["summary"]["failed_workspaces"] == ["broken_key"]
    assert "AuthError" in doc["workspaces"][1]["error"]
    assert "Instantly refused the API key (workspaces.broken_key.api_key" in doc["workspaces"][1]["error"]
    assert len(doc["workspaces"][0]["webhooks"]) == 4
    assert world["key"] not in out


async def test_unknown_workspace_is_a_config_error(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--workspace must name a configured workspace."""
    with pytest.raises(ConfigError, match="'nope' is not in the config's workspaces"):
        await run(["webhooks", "check", "--config", world["cfg"], "--workspace", "nope"], capsys)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], EXIT_FINDINGS), (["--fail-on", "high"], EXIT_FINDINGS), (["--fail-on", "medium"], EXIT_FINDINGS),
     (["--fail-on", "critical"], EXIT_OK), (["--fail-on", "none"], EXIT_OK),
     (["--workspace", "broken_key"], EXIT_FAILED), (["--workspace", "broken_key", "--fail-on", "medium"], EXIT_FAILED),
     (["--workspace", "broken_key", "--workspace", "acme", "--fail-on", "critical"], EXIT_FAILED)],
)  # fmt: skip
async def test_exit_codes_follow_fail_on_as_check_does(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], argv: list[str], expected: int
) -> None:
    """Exit as ``check``: 1 a finding at or above ``--fail-on`` (default high), else 3 a workspace whose
    webhooks could not be listed, else 0 (the help said 3 for findings and 1 for an API failure)."""
    if "--workspace" not in argv:
        argv = [*argv, "--workspace", "acme"]
    code, out = await run(["webhooks", "check", "--config", world["cfg"], *argv], capsys)
    assert code == expected
    verdict = {0: "passing", 1: "FAILING", 3: "INCOMPLETE"}[expected]
    assert f"— {verdict} (--fail-on " in out


async def test_fail_on_only_medium_findings(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A workspace with only medium findings (a disabled webhook) passes the default threshold, fails
    ``--fail-on medium``, and the config's ``check.fail_on`` sets the default."""
    async with InstantlySimulator() as sim:
        ws = sim.add_workspace("Medium")
        key = sim.add_api_key(ws.id)
        hook = sim.state.create_webhook(ws.id, "https://x.example/h", fields={"headers": {"X-Webhook-Secret": "v"}})
        sim.state.mark_webhook_error(hook.id)
        (tmp_path / "key").write_text(key.key)
        cfg = tmp_path / "medium.yaml"
        cfg.write_text(f"workspaces:\n  m:\n    api_key_file: key\n    base_url: {sim.url}\n")
        assert (await run(["webhooks", "check", "-c", str(cfg)], capsys))[0] == EXIT_OK
        assert (await run(["webhooks", "check", "-c", str(cfg), "--fail-on", "medium"], capsys))[0] == EXIT_FINDINGS
        cfg.write_text(cfg.read_text() + "check: {fail_on: medium}\n")
        assert (await run(["webhooks", "check", "-c", str(cfg)], capsys))[0] == EXIT_FINDINGS
        assert (await run(["webhooks", "check", "-c", str(cfg), "--fail-on", "high"], capsys))[0] == EXIT_OK


def test_fail_on_takes_check_values(capsys: pytest.CaptureFixture[str]) -> None:
    """``--fail-on`` takes what ``check``'s takes; anything else is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["webhooks", "check", "--fail-on", "severe"])
    assert exc.value.code == 2 and "info, low, medium, high, critical, none" in capsys.readouterr().err


def test_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["webhooks", "check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit 0: no finding at or above --fail-on; 1: some finding is;" in text and "1: API failure" not in text


@pytest.mark.parametrize("fmt", ["json", "table"])
async def test_a_webhook_name_quoting_a_hook_url_or_a_token_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    async with InstantlySimulator() as sim:
        ws = sim.add_workspace("Acme Outreach")
        key = sim.add_api_key(ws.id)
        name = "zap https://hooks.zapier.com/hooks/catch/1/CNRYzap04/ Bearer CNRYbearer05xyz token=CNRYtok06"
        sim.state.create_webhook(ws.id, "https://hooks.acme.example/hooks/crm", fields={"name": name})
        monkeypatch.setenv("SIM_KEY", key.key)
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"workspaces:\n  acme:\n    api_key: ${{SIM_KEY}}\n    base_url: {sim.url}\n    max_retries: 0\n"
        )
        _, out = await run(["webhooks", "check", "--config", str(cfg), "--format", fmt], capsys)
    assert "hooks.zapier.com" in out and "CNRY" not in out


@pytest.mark.parametrize("fmt", ["json", "table"])
async def test_a_token_or_hook_url_without_a_scheme_is_not_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """Nobody registered them: a Slack token and a schemeless Zapier hook in the name, a Slack hook URL
    without ``https://`` as the target. The report keeps the hosts, not the credentials."""
    async with InstantlySimulator() as sim:
        ws = sim.add_workspace("Acme Outreach")
        key = sim.add_api_key(ws.id)
        slack_token = "xox" + "b-2718281828-3141592653589-CNRYslackBot08xZ7wLmP4vD"
        name = f"alerts {slack_token} via hooks.zapier.com/hooks/catch/1/CNRYzap09/"
        target = "hooks.slack.com/services/T0CNRY001/B0CNRY002/CNRYslackHook10"
        sim.state.create_webhook(ws.id, target, fields={"name": name})
        monkeypatch.setenv("SIM_KEY", key.key)
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"workspaces:\n  acme:\n    api_key: ${{SIM_KEY}}\n    base_url: {sim.url}\n    max_retries: 0\n"
        )
        _, out = await run(["webhooks", "check", "--config", str(cfg), "--format", fmt], capsys)
    assert "hooks.zapier.com" in out and "hooks.slack.com" in out and "CNRY" not in out
