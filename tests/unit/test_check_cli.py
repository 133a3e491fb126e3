"""``instantly-audit check``: table / JSON / SARIF output, exit codes, and that no secret is ever printed."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connectors.instantly.checklist import CHECKLIST
from connectors.instantly.sim import InstantlySimulator, SimConfig
from pipeline.checks.render import format_json, format_sarif, format_table
from pipeline.checks.report import (
    EXIT_FAIL,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    CheckResult,
    Location,
    Resource,
    exit_code,
)
from pipeline.cli.main import main
from tests.unit.test_check_posture import SPEC, build_workspace, variant

SARIF_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "sarif-2.1.0.json").read_text())
NOW = 1_790_000_000.0


class ThreadedSim:
    """An :class:`InstantlySimulator` served from its own event loop on a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = InstantlySimulator(seed=11, config=SimConfig(rate_limit_per_second=None, rate_limit_per_minute=None))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> InstantlySimulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)
        return self.sim

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two workspaces (one clean, one with an all:all key and an http webhook) and a config file for them."""
    with ThreadedSim() as sim:
        now = sim.clock()
        clean = build_workspace(sim, "clean", variant({}), now)
        bad_spec = variant({"api_keys": [{"name": "legacy", "scopes": ["all:all"], "age_days": 200}],
                            "webhooks": [{"name": "plain", "url": "http://hooks.acme.example/x"}]})  # fmt: skip
        bad = build_workspace(sim, "bad", bad_spec, now)
        legacy_secret = sim.state.api_keys[bad.keys["legacy"]].key
        (tmp_path / "clean.key").write_text(clean.pipeline_secret + "\n")
        (tmp_path / "bad.key").write_text(bad.pipeline_secret + "\n")
        budget = {"requests_per_second": 100, "requests_per_minute": 6000}
        doc = {
            "workspaces": {
                "clean": {"api_key_file": "clean.key", "base_url": sim.url, "budget": budget},
                "bad": {"api_key_file": "bad.key", "base_url": sim.url, "budget": budget},
            },
            "rules": SPEC["settings"]["rules"],
        }
        (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(doc))
        yield {"sim": sim, "dir": tmp_path, "config": str(tmp_path / "pipeline.yaml"),
               "secrets": [clean.pipeline_secret, bad.pipeline_secret, legacy_secret],
               "ids": {"clean": clean.workspace_id, "bad": bad.workspace_id}}  # fmt: skip


ADMINS = ["--allowed-admin", "owner@acme.example"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``instantly-audit`` in-process; return (exit code, stdout, stderr) — argparse's exit included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    """None of ``secrets`` appears in any of ``texts``."""
    for t in texts:
        for s in secrets:
            assert s not in t


def test_table_groups_by_checklist_item(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The default table has one block per checklist item and names the failing resources."""
    code, out, _ = run_cli(["check", "--config", world["config"], *ADMINS], capsys)
    assert code == EXIT_FAIL
    assert "[FAIL] No all:all keys in production" in out
    assert "[PASS] Block list entries for competitor/internal domains" in out
    assert out.index("No all:all keys in production") < out.index("Webhook endpoints validate authentication")
    assert "[bad] API key 'legacy'" in out and "uses plain http://" in out
    assert "Result:" in out and "FAILING (--fail-on high)" in out


def test_workspace_filter_and_fail_on_none(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--workspace restricts the check; the clean workspace exits 0; --fail-on none never fails."""
    code, out, _ = run_cli(["check", "--config", world["config"], "--workspace", "clean", *ADMINS], capsys)
    assert code == EXIT_OK and "[bad]" not in out
    code, _, _ = run_cli(["check", "--config", world["config"], "--fail-on", "none", *ADMINS], capsys)
    assert code == EXIT_OK


def test_workspace_filter_takes_the_instantly_id(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--workspace accepts the workspace's Instantly id as well as its alias; an unknown name is a usage error."""
    code, out, _ = run_cli(["check", "--config", world["config"], "--workspace", world["ids"]["bad"], *ADMINS], capsys)
    assert code == EXIT_FAIL and "[bad]" in out and "[clean]" not in out
    code, out, _ = run_cli(
        ["check", "--config", world["config"], "--workspace", world["ids"]["clean"], *ADMINS], capsys
    )
    assert code == EXIT_OK and "[bad]" not in out
    code, _, err = run_cli(["check", "--config", world["config"], "--workspace", "nope", *ADMINS], capsys)
    assert code == EXIT_USAGE and "nope" in err and "clean" in err


def test_fail_on_thresholds(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--fail-on critical still fails on the all:all key; only severities at or above the threshold count."""
    code, _, _ = run_cli(["check", "--config", world["config"], "--fail-on", "critical", *ADMINS], capsys)
    assert code == EXIT_FAIL
    code, _, err = run_cli(["check", "--config", world["config"], "--fail-on", "severe"], capsys)
    assert code == EXIT_USAGE and "--fail-on" in err


def test_json_output(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--format json carries every result, the summary and the exit code."""
    code, out, _ = run_cli(["check", "--config", world["config"], "--format", "json", *ADMINS], capsys)
    doc = json.loads(out)
    assert doc["schema"] == "instantly.check.v1"
    assert doc["summary"]["exit_code"] == code == EXIT_FAIL
    fails = {(r["target"], r["check_id"]) for r in doc["results"] if r["status"] == "fail"}
    assert ("bad", "api_key.all_scope") in fails and ("bad", "webhook.insecure_target") in fails
    assert not any(t == "clean" for t, _ in fails)


def test_sarif_validates_against_the_schema(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """--format sarif -o FILE writes SARIF 2.1.0 that validates against the OASIS schema; the table goes to stdout."""
    target = world["dir"] / "check.sarif"
    code, out, _ = run_cli(["check", "--config", world["config"], "--format", "sarif", "-o", str(target), *ADMINS],
                           capsys)  # fmt: skip
    assert code == EXIT_FAIL and "Result:" in out
    doc = json.loads(target.read_text())
    jsonschema.validate(doc, SARIF_SCHEMA, cls=jsonschema.Draft4Validator)
    run = doc["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert "api_key.all_scope" in rule_ids
    crit = [r for r in run["results"] if r["ruleId"] == "api_key.all_scope"]
    assert crit and crit[0]["level"] == "error"
    assert run["tool"]["driver"]["rules"][crit[0]["ruleIndex"]]["properties"]["security-severity"] == "9.5"
    assert crit[0]["locations"][0]["logicalLocations"][0]["kind"] == "resource"
    assert_no_secret([target.read_text(), out], world["secrets"])


def test_no_secret_in_any_output_or_log(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Canary: the pipeline keys and the listed all:all key never reach stdout, stderr, files or logs."""
    caplog.set_level(logging.DEBUG)
    texts = []
    for fmt in ("table", "json", "sarif"):
        _, out, err = run_cli(["check", "--config", world["config"], "--format", fmt, *ADMINS], capsys)
        texts += [out, err]
    texts.append(caplog.text)
    assert_no_secret(texts, world["secrets"])


def test_unreachable_workspace_exits_3(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A revoked pipeline key makes the check incomplete (exit 3), not green."""
    sim: InstantlySimulator = world["sim"]
    secret = (world["dir"] / "clean.key").read_text().strip()
    key = sim.state.key_by_secret(secret)
    assert key is not None
    sim.state.delete_api_key(key.id)
    code, out, _ = run_cli(["check", "--config", world["config"], "--workspace", "clean", *ADMINS], capsys)
    assert code == EXIT_INCOMPLETE and "ERROR" in out and "401" in out


def test_an_unusable_workspace_says_what_to_fix(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` said ``cannot check workspace acme: UnreachableError: GET /api/v2/workspaces/current:
    request failed (ClientConnectorDNSError)`` where ``run --once`` names the host and the setting: the
    client's hint is part of the finding (a refused key: the setting that holds it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "down.yaml"
    cfg.write_text(f"workspaces:\n  acme: {{api_key_file: {world['dir'] / 'clean.key'}, "
                   f"base_url: 'http://127.0.0.1:{port}', max_retries: 0}}\n")  # fmt: skip
    code, out, _ = run_cli(["check", "--config", str(cfg), *ADMINS], capsys)
    assert code == EXIT_INCOMPLETE
    assert f"127.0.0.1:{port} refused the connection (workspaces.acme.base_url)" in out, out
    sim: InstantlySimulator = world["sim"]
    key = sim.state.key_by_secret((world["dir"] / "clean.key").read_text().strip())
    assert key is not None
    sim.state.delete_api_key(key.id)
    code, out, _ = run_cli(["check", "--config", world["config"], "--workspace", "clean", *ADMINS], capsys)
    assert code == EXIT_INCOMPLETE and "Instantly refused the API key (workspaces.clean.api_key" in out, out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --config and no --repo, a missing repo or a missing config are usage errors (exit 2)."""
    assert run_cli(["check"], capsys)[0] == EXIT_USAGE
    assert run_cli(["check", "--repo", str(tmp_path / "nope")], capsys)[0] == EXIT_USAGE
    assert run_cli(["check", "--config", str(tmp_path / "nope.yaml")], capsys)[0] == EXIT_USAGE


def _result(status: str, severity: str, **kw: Any) -> CheckResult:
    return CheckResult("x.check", "X", CHECKLIST[0], severity, status, "msg", "t", **kw)  # type: ignore[arg-type]


def test_exit_code_rules() -> None:
    """Failures at or above the threshold give 1; errors alone give 3; warnings never fail."""
    assert exit_code([_result("fail", "high")], "high") == EXIT_FAIL
    assert exit_code([_result("fail", "medium")], "high") == EXIT_OK
    assert exit_code([_result("warn", "critical")], "info") == EXIT_OK
    assert exit_code([_result("error", "high"), _result("fail", "low")], "high") == EXIT_INCOMPLETE
    assert exit_code([_result("error", "high"), _result("fail", "low")], "low") == EXIT_FAIL
    assert exit_code([_result("fail", "critical")], "none") == EXIT_OK


def test_formats_of_repository_findings_validate() -> None:
    """File findings carry path, line and fingerprint in every format; SARIF stays schema-valid."""
    results = [
        _result("fail", "critical", location=Location("config/.env.prod", 3, "a" * 40), fingerprint="sha256:1234abcd",
                resources=(Resource("file", "config/.env.prod"),)),
        _result("warn", "low", location=Location("src/app.py", 9), fingerprint="sha256:00ff00ff"),
        _result("error", "high"),
        _result("pass", "medium"),
    ]  # fmt: skip
    table = format_table(results, fail_on="high", targets=["repo ."], now=NOW)
    assert "config/.env.prod:3@aaaaaaaaaaaa sha256:1234abcd" in table
    doc = json.loads(format_json(results, fail_on="high", targets=["repo ."], now=NOW))
    assert doc["results"][0]["location"] == {"path": "config/.env.prod", "line": 3, "commit": "a" * 40}
    sarif = json.loads(format_sarif(results, fail_on="high", targets=["repo ."], now=NOW, config_path=None))
    jsonschema.validate(sarif, SARIF_SCHEMA, cls=jsonschema.Draft4Validator)
    res = sarif["runs"][0]["results"]
    assert [r["level"] for r in res] == ["error", "note"]
    assert res[0]["locations"][0]["physicalLocation"]["region"] == {"startLine": 3}
    assert res[0]["properties"]["commit"] == "a" * 40
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_sarif_fingerprints_are_stable() -> None:
    """partialFingerprints ignore line numbers, so a moved finding keeps its identity."""
    a = _result("fail", "high", location=Location("f.py", 3), fingerprint="sha256:11111111")
    b = _result("fail", "high", location=Location("f.py", 30), fingerprint="sha256:11111111")

    def fp(r: CheckResult) -> str:
        doc = json.loads(format_sarif([r], fail_on="high", targets=[], now=NOW, config_path=None))
        return str(doc["runs"][0]["results"][0]["partialFingerprints"]["instantlyAuditCheck/v1"])

    assert fp(a) == fp(b)
