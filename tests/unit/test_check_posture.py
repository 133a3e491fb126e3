"""``check`` against simulator workspaces: every checklist item has a passing and a failing fixture workspace."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.instantly.blast.check import BLAST_CHECKS
from connectors.instantly.posture import PostureSettings
from connectors.instantly.posture.catalog import OWN_CHECKS, STREAM_CHECKS
from connectors.instantly.posture.keys import name_evidence, needed_scopes
from connectors.instantly.posture.run import check_workspaces
from connectors.instantly.posture.settings import settings_from
from connectors.instantly.posture.snapshot import client_product, identify_own_key
from connectors.instantly.sim import InstantlySimulator, SimConfig
from connectors.instantly.sim.models import Actor
from pipeline.checks.report import CheckResult
from pipeline.clock import FakeClock
from pipeline.config.loader import parse_config
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "check" / "workspaces.yaml"
SPEC: dict[str, Any] = yaml.safe_load(FIXTURES.read_text(encoding="utf-8"))
DAY = 86_400.0
T0 = 1_790_000_000.0
PIPELINE_KEY = "security-poller"
NEEDED = needed_scopes(
    ("audit_logs", "api_keys", "members", "webhooks", "workspace", "group_members", "block_list", "accounts")
)
ALL_CHECKS = (*STREAM_CHECKS, *OWN_CHECKS, *BLAST_CHECKS)


@dataclass
class Built:
    """A fixture workspace in the simulator: its id, the pipeline key's secret and its keys by name."""

    source_id: str
    workspace_id: str
    pipeline_secret: str
    keys: dict[str, str]


def variant(extra: dict[str, Any]) -> dict[str, Any]:
    """The base workspace with a variant's additions (api_keys, members, usage, accounts add; webhooks, block_list
    replace)."""
    spec: dict[str, Any] = copy.deepcopy(SPEC["base"])
    for field in ("api_keys", "members", "usage", "accounts"):
        spec[field] = [*spec.get(field, []), *extra.get(field, [])]
    for field in ("webhooks", "block_list", "pipeline_scopes"):
        if field in extra:
            spec[field] = extra[field]
    return spec


def build_workspace(sim: InstantlySimulator, source_id: str, spec: dict[str, Any], now: float) -> Built:
    """Create one fixture workspace (owner owner@acme.example) in the simulator."""
    st = sim.state
    ws = st.add_workspace(f"Fixture {source_id}", owner_email="owner@acme.example", created_at=now - 400 * DAY)
    pipeline = st.create_api_key(ws.id, PIPELINE_KEY, list(spec.get("pipeline_scopes", NEEDED)),
                                 created_at=now - 5 * DAY)  # fmt: skip
    keys = {PIPELINE_KEY: pipeline.id}
    for k in spec.get("api_keys", []):
        keys[k["name"]] = st.create_api_key(ws.id, k["name"], k["scopes"], created_at=now - k["age_days"] * DAY).id
    for m in spec.get("members", []):
        st.invite_member(ws.id, m["email"], m["role"], accepted=m["accepted"], created_at=now - m["age_days"] * DAY)
    for h in spec.get("webhooks", []):
        hook = st.create_webhook(ws.id, h["url"], fields={"name": h["name"], "headers": h.get("headers")},
                                 created_at=now - 10 * DAY)  # fmt: skip
        if h.get("failing"):
            st.mark_webhook_error(hook.id)
    for value in spec.get("block_list", []):
        st.add_block_list_entry(ws.id, value, created_at=now - 10 * DAY)
    for a in spec.get("accounts", []):
        st.add_account(ws.id, a["email"], created_at=now - 30 * DAY, reply_to=a.get("reply_to"))
    for u in spec.get("usage", []):
        key = st.api_keys[keys[u["key"]]]
        st.insert_audit(ws.id, 9, timestamp=now - u["days_ago"] * DAY,
                        actor=Actor(None, None, key.id, "203.0.113.9", u["user_agent"], True))  # fmt: skip
    return Built(source_id, ws.id, pipeline.key, keys)


def config_for(sim: InstantlySimulator, built: list[Built], rules: dict[str, Any] | None = None) -> PipelineConfig:
    """A pipeline config watching ``built`` workspaces, each with its own pipeline key from the environment."""
    doc = {
        "workspaces": {
            b.source_id: {"api_key": f"${{KEY_{i}}}", "base_url": sim.url, "max_retries": 0,
                          "budget": {"requests_per_second": 100, "requests_per_minute": 6000}}
            for i, b in enumerate(built)
        },
        "rules": SPEC["settings"]["rules"] if rules is None else rules,
    }  # fmt: skip
    env = {f"KEY_{i}": b.pipeline_secret for i, b in enumerate(built)}
    return parse_config(yaml.safe_dump(doc), env=env)


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, check id, variant) for every pass/fail fixture and extra variant."""
    out: list[tuple[str, str, dict[str, Any]]] = [("base", "", {})]
    for check_id, pair in SPEC["checks"].items():
        out.append((f"{check_id}:pass", check_id, pair["pass"]))
        out.append((f"{check_id}:fail", check_id, pair["fail"]))
    for name, extra in SPEC["extra"].items():
        out.append((f"extra:{name}", extra["check"], extra))
    return out


CASES = cases()


async def _run_all() -> tuple[dict[str, list[CheckResult]], dict[str, Built]]:
    clock = FakeClock(T0)
    cfg_sim = SimConfig(rate_limit_per_second=None, rate_limit_per_minute=None)
    async with InstantlySimulator(clock=clock.now, config=cfg_sim, seed=7) as sim:
        built = {name: build_workspace(sim, f"ws{i}", variant(extra), T0) for i, (name, _c, extra) in enumerate(CASES)}
        cfg = config_for(sim, list(built.values()))
        settings = settings_from(SPEC["settings"]["check"])
        checked = await check_workspaces(cfg, settings, clock=clock)
    by_target: dict[str, list[CheckResult]] = {}
    for r in checked.results:
        by_target.setdefault(r.target, []).append(r)
    return {name: by_target[b.source_id] for name, b in built.items()}, built


@pytest.fixture(scope="module")
def outcome() -> Iterator[tuple[dict[str, list[CheckResult]], dict[str, Built]]]:
    """Every fixture workspace checked once (one simulator, one run)."""
    yield asyncio.run(_run_all())


def statuses(results: list[CheckResult], check_id: str) -> set[str]:
    """The statuses a check reported for one workspace."""
    return {r.status for r in results if r.check_id == check_id}


def test_fixture_file_covers_every_check() -> None:
    """Each stream check and own check has a pass and a fail fixture."""
    assert set(SPEC["checks"]) == set(ALL_CHECKS)
    for pair in SPEC["checks"].values():
        assert {"pass", "fail"} <= set(pair)


def test_base_workspace_passes_everything(outcome: Any) -> None:
    """The base fixture reports no failure, warning or error for any check."""
    results, _ = outcome
    bad = [r for r in results["base"] if r.status not in ("pass", "skip")]
    assert bad == []
    assert {r.check_id for r in results["base"]} == set(ALL_CHECKS)


@pytest.mark.parametrize("name", [n for n, _c, _e in CASES if n.endswith(":pass")])
def test_passing_fixture(outcome: Any, name: str) -> None:
    """A passing fixture workspace passes its check and fails nothing else."""
    results, _ = outcome
    check_id = name.rsplit(":", 1)[0]
    assert statuses(results[name], check_id) == {"pass"}
    assert [r for r in results[name] if r.status in ("fail", "warn", "error")] == []


@pytest.mark.parametrize("name", [n for n, _c, _e in CASES if n.endswith(":fail") or n.startswith("extra:")])
def test_failing_fixture(outcome: Any, name: str) -> None:
    """A failing fixture workspace fails (or warns on) its check, naming the offending resources, and nothing else."""
    results, _ = outcome
    _n, check_id, extra = next(c for c in CASES if c[0] == name)
    want = extra.get("status", "fail")
    mine = [r for r in results[name] if r.check_id == check_id and r.status == want]
    assert mine, f"{check_id} did not {want}: {[(r.check_id, r.status, r.message) for r in results[name]]}"
    named = {x.name for r in mine for x in r.resources} | {x.id for r in mine for x in r.resources}
    for expected in extra.get("expect", []):
        assert expected in named, f"{expected} not among {named}"
    allowed = {check_id, *extra.get("also", [])}
    others = [(r.check_id, r.status) for r in results[name] if r.status in ("fail", "warn", "error")
              and r.check_id not in allowed]  # fmt: skip
    assert others == []


def test_pipeline_scopes_says_what_to_drop(outcome: Any) -> None:
    """The over-scoped pipeline key fails high and names the scope to drop."""
    results, _ = outcome
    (r,) = [r for r in results["api_key.pipeline_scopes:fail"] if r.check_id == "api_key.pipeline_scopes"]
    assert r.severity == "high"
    assert r.attributes["drop_scopes"] == ["campaigns:update"]
    assert "drop campaigns:update" in r.message


def test_pipeline_all_read_is_replaced_by_exact_scopes(outcome: Any) -> None:
    """A pipeline key with all:read is told to drop it and add the exact read scopes."""
    results, _ = outcome
    (r,) = [r for r in results["extra:pipeline_key_all_read"] if r.check_id == "api_key.pipeline_scopes"]
    assert r.status == "fail" and r.severity == "medium"
    assert r.attributes["drop_scopes"] == ["all:read"]
    assert r.attributes["add_scopes"] == NEEDED


def test_stream_rule_severities(outcome: Any) -> None:
    """Stream rules keep their catalog severities in the check (all:all critical, stale medium, http high)."""
    results, _ = outcome

    def sev(case: str, check_id: str) -> str:
        return str(next(r.severity for r in results[case] if r.check_id == check_id and r.status == "fail"))

    assert sev("api_key.all_scope:fail", "api_key.all_scope") == "critical"
    assert sev("api_key.stale:fail", "api_key.stale") == "medium"
    assert sev("webhook.insecure_target:fail", "webhook.insecure_target") == "high"
    assert sev("webhook.unauthenticated:fail", "webhook.unauthenticated") == "high"
    assert sev("account.reply_redirect:fail", "account.reply_redirect") == "high"


def test_results_hold_no_secret(outcome: Any) -> None:
    """No result of any fixture workspace contains a key value or a webhook header value."""
    results, built = outcome
    text = repr([r.to_dict() for rs in results.values() for r in rs])
    for b in built.values():
        assert b.pipeline_secret not in text
    assert "fixture-webhook-secret-1" not in text and "fixture-basic-secret" not in text


async def test_unreachable_workspace_is_an_error() -> None:
    """A revoked pipeline key yields an error result (exit 3), not a pass."""
    clock = FakeClock(T0)
    async with InstantlySimulator(clock=clock.now, seed=3) as sim:
        b = build_workspace(sim, "gone", variant({}), T0)
        cfg = config_for(sim, [b])
        sim.state.delete_api_key(b.keys[PIPELINE_KEY])
        checked = await check_workspaces(cfg, PostureSettings(), clock=clock)
    assert [(r.check_id, r.status) for r in checked.results] == [("workspace.reachable", "error")]
    assert "401" in checked.results[0].message


async def test_refused_listing_marks_its_checks_as_errors() -> None:
    """A key without webhooks:read makes the webhook checks errors, the others still run."""
    clock = FakeClock(T0)
    async with InstantlySimulator(clock=clock.now, seed=4) as sim:
        scopes = [s for s in NEEDED if s != "webhooks:read"]
        b = build_workspace(sim, "nohooks", variant({"pipeline_scopes": scopes}), T0)
        checked = await check_workspaces(config_for(sim, [b]), settings_from(SPEC["settings"]["check"]), clock=clock)
    by = {r.check_id: r.status for r in checked.results}
    assert by["webhook.unauthenticated"] == by["webhook.insecure_target"] == by["webhook.failing"] == "error"
    assert by["api_key.all_scope"] == "pass"
    assert by["api_key.pipeline_scopes"] == "warn"


async def test_rotation_days_and_disabled_rules() -> None:
    """--rotation-days tightens api_key.stale; a rule disabled in the rules config is reported as skipped."""
    clock = FakeClock(T0)
    async with InstantlySimulator(clock=clock.now, seed=5) as sim:
        b = build_workspace(sim, "tuned", variant({}), T0)
        rules = {**SPEC["settings"]["rules"], "webhook.failing": {"enabled": False}}
        settings = settings_from({**SPEC["settings"]["check"], "rotation_days": 10})
        checked = await check_workspaces(config_for(sim, [b], rules), settings, clock=clock)
    stale = [r for r in checked.results if r.check_id == "api_key.stale"]
    assert [r.status for r in stale] == ["fail"] and "reporting" in stale[0].message
    assert [r.status for r in checked.results if r.check_id == "webhook.failing"] == ["skip"]


async def test_unknown_workspace_filter_is_a_config_error() -> None:
    """--workspace naming a workspace that is not configured is refused at once: a name that is not
    UUID-shaped cannot be an Instantly workspace id, so no API is asked (the key here reaches nothing)."""
    cfg = parse_config("workspaces: {a: {api_key: '${K}', base_url: 'http://127.0.0.1:9/api/v2'}}", env={"K": "k"})
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConfigError, match="nope") as err:
        await check_workspaces(cfg, PostureSettings(), clock=FakeClock(T0), only=["nope"])
    assert asyncio.get_running_loop().time() - started < 2.0
    assert "known aliases: a" in str(err.value) and "could not be asked" not in str(err.value)


async def test_unknown_workspace_id_names_the_workspaces_it_could_not_ask() -> None:
    """A UUID-shaped name is looked up through each key; when the API cannot answer, the error says so."""
    cfg = parse_config(
        "workspaces: {a: {api_key: '${K}', base_url: 'http://127.0.0.1:9/api/v2', max_retries: 0}}", env={"K": "k"}
    )
    wid = "0193c2a4-7d1e-7b3a-9c4f-2e8d5a6b7c10"

    async def no_wait(_: float) -> None:
        return None

    with pytest.raises(ConfigError, match=wid) as err:
        await check_workspaces(cfg, PostureSettings(), clock=FakeClock(T0), only=[wid], sleep=no_wait)
    assert "the API could not be asked for the id of: a" in str(err.value)


def test_settings_errors_name_the_key() -> None:
    """An invalid check section is a ConfigError naming check.<key>."""
    with pytest.raises(ConfigError, match=r"check\.invitation_max_age_days"):
        settings_from({"invitation_max_age_days": -1})
    with pytest.raises(ConfigError, match=r"check\.fail_on"):
        settings_from({"fail_on": "severe"})


def test_identify_own_key_by_value_name_and_mask() -> None:
    """The pipeline's key is recognised by its exact value, its configured name, or a unique masked form."""
    items = [{"id": "a", "name": "x", "key": "SECRETVALUE-123456"}, {"id": "b", "name": "poller", "key": "other"}]
    assert identify_own_key(items, "SECRETVALUE-123456", None) == (("a",), "value")
    assert identify_own_key(items, "nope", "poller") == (("b",), "name")
    masked = [{"id": "c", "name": "m", "key": "SECR**********3456"}, {"id": "d", "name": "n", "key": "ABCD****WXYZ"}]
    assert identify_own_key(masked, "SECRETVALUE-123456", None) == (("c",), "masked")
    assert identify_own_key([{"id": "e", "name": "q"}], "SECRETVALUE-123456", None) == ((), "none")


def test_client_product_and_name_evidence() -> None:
    """User agents reduce to product names; names listing several integrations or 'shared' are evidence."""
    assert client_product("python-requests/2.32") == "python-requests"
    assert client_product("Mozilla/5.0 (X11)") == "browser"
    assert client_product("") is None
    assert name_evidence("Zapier + HubSpot") is not None
    assert name_evidence("shared key") is not None
    assert name_evidence("CRM sync") is None
    assert name_evidence("zapier") is None
