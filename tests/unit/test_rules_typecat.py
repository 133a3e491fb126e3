"""Rule ``types`` against the event types the loaded rule packs declare: a typo is refused at load with its
key path and a "did you mean" hint; the Instantly pack's catalog stays in step with what its connector emits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from connectors.instantly import snapshots
from connectors.instantly.audit_codes import AUDIT_CODES, describe_activity
from connectors.instantly.event_catalog import EVENT_TYPES, SNAPSHOT_CHANGES
from connectors.instantly.rules import PACK
from connectors.instantly.webhook_normalize import KNOWN_EVENT_TYPES, event_type_for
from pipeline.errors import ConfigError
from pipeline.rules.base import RulePack
from pipeline.rules.config import parse_rules_config
from pipeline.rules.reach import globs_overlap, type_matches

ROOT = Path(__file__).resolve().parents[2]


def _rule(types: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": "custom.t", "title": "t", "severity": "low", "types": types,
            "detection": {"s": {"actor.ip": "203.0.113.9"}, "condition": "s"}, **extra}  # fmt: skip


def _corr(types: list[str]) -> dict[str, Any]:
    entry = {"name": "grant", "types": types, "detection": {"s": {"attributes.role": "owner"}, "condition": "s"}}
    return {"id": "custom.c", "title": "c", "severity": "low",
            "correlation": {"type": "event_count", "rules": [entry], "group-by": ["actor.user_id"],
                            "timespan": "10m", "condition": {"gte": 3}}}  # fmt: skip


def test_typo_is_refused_with_its_path_and_a_hint() -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules_config({"custom": [_rule(["audit.*", "audit.user_logn"])]})
    assert ("rules.custom.0 (custom.t).types.1: 'audit.user_logn' matches no event type of the loaded rule packs "
            "(did you mean 'audit.user_login'?)") in str(err.value)  # fmt: skip
    assert "types.0" not in str(err.value)


def test_resolve_types_typo_is_refused() -> None:
    rule = _rule(["webhook.created"], resolve={"gone": {"type": "webhook.deleted"}, "condition": "gone"},
                 resolve_types=["webhook.delted"], group_by=["target.id"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"resolve_types\.0: 'webhook\.delted' .*did you mean 'webhook\.deleted'"):
        parse_rules_config({"custom": [rule]})


def test_a_type_far_from_any_lists_the_families() -> None:
    with pytest.raises(ConfigError, match=r"types\.0: 'zzz\.qqq' matches no event type .*the packs' types are "):
        parse_rules_config({"custom": [_rule(["zzz.qqq"])]})


@pytest.mark.parametrize(
    "types",
    [["*"], ["audit.user_login"], ["audit.*"], ["audit.activity_77"], ["audit.activity_*"], ["api_key.[cd]*"],
     ["*.created"], ["webhook_delivery.label.hot_lead"], ["pipeline.stream_unavailable"], ["member.invited"]],
)  # fmt: skip
def test_valid_exact_and_glob_types_load(types: list[str]) -> None:
    rules = parse_rules_config({"custom": [_rule(types)]})
    assert "custom.t" in {r.meta.id for r in rules.rules}


def test_correlation_entry_typo_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_rules_config({"custom": [_corr(["member.invited", "member.role_chagned"])]})
    assert ("rules.custom.0 (custom.c).correlation.rules.0.types.1: 'member.role_chagned' matches no event type"
            in str(err.value))  # fmt: skip
    assert "did you mean 'member.role_changed'?" in str(err.value)
    assert "custom.c" in {r.meta.id for r in parse_rules_config({"custom": [_corr(["member.*"])]}).rules}


def test_a_file_rule_typo_names_its_line(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - id: custom.f\n    title: f\n    severity: low\n    types: [api_key.craeted]\n"
                 "    detection: {s: {actor.ip: 203.0.113.9}, condition: s}\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(ConfigError, match=r"r\.yaml:5: rules\[0\] \(custom\.f\)\.types\.0: 'api_key\.craeted'"):
        parse_rules_config({"files": [str(f)]})


def test_packs_without_a_catalog_are_not_checked() -> None:
    bare = RulePack(name="bare")
    rules = parse_rules_config({"custom": [_rule(["acme.user_logn"]), _corr(["acme.x"])]}, packs=(bare,))
    assert {"custom.t", "custom.c"} <= {r.meta.id for r in rules.rules}
    other = RulePack(name="acme", event_types=("acme.*",))  # one pack with a catalog: the union is checked
    assert parse_rules_config({"custom": [_rule(["acme.login"])]}, packs=(bare, other)).rules
    with pytest.raises(ConfigError, match=r"'audit\.user_login' matches no event type"):
        parse_rules_config({"custom": [_rule(["audit.user_login"])]}, packs=(bare, other))


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [("*", "x.y", True), ("audit.*", "audit.activity_*", True), ("audit.activity_7", "audit.activity_*", True),
     ("api_key.[!u]*", "api_key.updated", False), ("x.*", "audit.*", False),
     ("audit.?ser_login", "audit.user_login", True)],
)  # fmt: skip
def test_globs_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


# ---- parity: the catalog is what the connector emits ------------------------------------------------
def test_pack_declares_the_catalog() -> None:
    assert PACK.event_types == EVENT_TYPES


def test_every_audit_type_is_in_the_catalog() -> None:
    for code in [*AUDIT_CODES, 0, 13, 77, 10_000, None, "x", -1]:
        assert type_matches(EVENT_TYPES, describe_activity(code).type), code


def test_every_webhook_delivery_type_is_in_the_catalog() -> None:
    for label in [*KNOWN_EVENT_TYPES, "email_link_clicked", "Hot Lead!", "custom_label"]:
        assert type_matches(EVENT_TYPES, event_type_for(label)), label


def _classified(stream: str) -> set[str]:
    """Every change kind a stream's classifier gives, over inputs that exercise each of its branches."""
    classify = snapshots.KINDS[stream].classify
    fields = frozenset({"scopes", "name", "accepted", "role", "permissions", "status", "headers", "owner",
                        "plan_id", "scheduled_for_removal_at", "org_client_domain", "reply_to",
                        "tracking_domain_name", "warmup_status", "other"})  # fmt: skip
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"status": 1, "scheduled_for_removal_at": None, "headers": {"a": "x"}},
         {"status": -1, "accepted": True, "scheduled_for_removal_at": 5, "headers": {"b": ""}}),
        ({"status": -1, "scheduled_for_removal_at": 5}, {"status": 1, "scheduled_for_removal_at": None}),
    ]  # fmt: skip
    return {suffix for b, a in pairs for suffix, _, _ in classify(b, a, fields)}


@pytest.mark.parametrize("stream", sorted(snapshots.KINDS))
def test_snapshot_change_kinds_match_the_classifiers(stream: str) -> None:
    assert set(SNAPSHOT_CHANGES) == set(snapshots.KINDS)
    assert _classified(stream) == set(SNAPSHOT_CHANGES[stream])
    kind = snapshots.KINDS[stream]
    for suffix in (kind.added, kind.removed, kind.baseline, *SNAPSHOT_CHANGES[stream]):
        assert f"{kind.prefix}.{suffix}" in EVENT_TYPES


def test_every_pipeline_type_the_connector_names_is_in_the_catalog() -> None:
    base = ROOT / "connectors" / "instantly"
    named = {m for f in base.rglob("*.py") if "rules" not in f.relative_to(base).parts
             for m in re.findall(r"\"(pipeline\.[a-z_]+)\"", f.read_text(encoding="utf-8"))}  # fmt: skip
    assert named
    assert named == {t for t in EVENT_TYPES if t.startswith("pipeline.")}


def test_python_rules_read_catalogued_types() -> None:
    for cls in PACK.rules:
        for t in cls.meta.event_types:
            assert any(globs_overlap(t, c) for c in EVENT_TYPES), (cls.meta.id, t)
