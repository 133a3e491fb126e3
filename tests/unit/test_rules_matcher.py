"""The Sigma-like YAML matcher: field paths, modifiers, conditions, templates and compiled rules."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pipeline.clock import FakeClock, parse_time
from pipeline.errors import ConfigError
from pipeline.rules.engine import RulesEngine
from pipeline.rules.matcher import RuleSyntaxError, compile_detection, compile_template
from pipeline.rules.testing import make_event
from schemas.event import Event
from schemas.validate import schema_errors

T0 = parse_time("2026-03-01T00:00:00Z")


def ev(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "actor": {"user_id": "u1", "user_name": "Ann Lee", "ip": "203.0.113.7", "via_api": False},
        "attributes": {"scopes": ["leads:read", "all:read"], "affected_count": 1500, "label": "Lead Exported"},
    }
    base.update(kw)
    return make_event(kw.pop("type", "audit.lead_exported"), time=T0, **{k: v for k, v in base.items() if k != "type"})


def match(detection: dict[str, Any], event: Event | None = None) -> bool:
    return compile_detection(detection)(event or ev())


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("type", "audit.lead_exported", True),
        ("type", "AUDIT.LEAD_EXPORTED", True),
        ("type|cased", "AUDIT.LEAD_EXPORTED", False),
        ("actor.user_name|contains", "ann", True),
        ("actor.user_name|startswith", "Ann", True),
        ("actor.user_name|endswith", "lee", True),
        ("actor.ip|cidr", "203.0.113.0/24", True),
        ("actor.ip|cidr", "10.0.0.0/8", False),
        ("actor.ip|re", r"^203\.0\.113\.\d+$", True),
        ("attributes.label|re|i", "^lead exported$", True),
        ("attributes.label|re", "^lead exported$", False),
        ("attributes.affected_count|re", "^15..$", True),  # a number matches as its string form
        ("actor.via_api|re", "^false$", False),  # booleans have no string form (as with contains)
        ("attributes.affected_count|gte", 1500, True),
        ("attributes.affected_count|gt", 1500, False),
        ("attributes.affected_count|lt", 2000, True),
        ("attributes.affected_count|lte", 1499, False),
        ("attributes.affected_count", 1500, True),
        ("attributes.scopes", "all:read", True),
        ("attributes.scopes|all", ["all:read", "leads:read"], True),
        ("attributes.scopes|all", ["all:read", "all:all"], False),
        ("attributes.scopes|in", ["all:all", "all:read"], True),
        ("actor.via_api", False, True),
        ("actor.api_key_id", None, True),
        ("attributes.missing|exists", False, True),
        ("actor.ip|exists", True, True),
        ("source.kind", "audit_log", True),
        ("workspace.id", ["ws-9", "ws-1"], True),
    ],
)
def test_field_modifiers(field: str, value: Any, expected: bool) -> None:
    """Each modifier compares as in Sigma (case-insensitive strings, any element of a list field)."""
    assert match({"sel": {field: value}}) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("a and b", True),
        ("a and not b", False),
        ("a and (not b or c)", False),
        ("not c", True),
        ("1 of x*", True),
        ("all of x*", False),
        ("all of them", False),
        ("1 of them and not c", True),
        ("c or a and b", True),
    ],
)
def test_conditions(condition: str, expected: bool) -> None:
    """Conditions combine selections with and/or/not, parentheses and 'N of' quantifiers."""
    det = {
        "a": {"type": "audit.lead_exported"},
        "b": {"actor.user_id": "u1"},
        "c": {"actor.user_id": "someone-else"},
        "x1": {"attributes.affected_count|gte": 1000},
        "x2": {"attributes.affected_count|gte": 5000},
        "condition": condition,
    }
    assert match(det) is expected


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("attributes.note|exists", True),  # present with value null: it exists (modifiers appendix)
        ("attributes.missing|exists", False),
        ("raw.note|exists", True),
        ("raw.missing|exists", False),
        ("change.after.role|exists", True),
        ("change.before.role|exists", False),  # change.before is null: nothing under it exists
        ("attributes.nested.inner|exists", True),
        ("actor.api_key_id|exists", False),  # a fixed Event v1 field: null is absent (what shipped rules rely on)
        ("actor.ip|exists", True),
    ],
)
def test_exists_is_presence_of_a_key_even_when_its_value_is_null(field: str, expected: bool) -> None:
    """``|exists`` on a mapping-backed path tests the key, not the value; ``|exists: false`` is its negation."""
    e = ev(attributes={"note": None, "nested": {"inner": None}}, change={"before": None, "after": {"role": None}})
    e = msgspec.structs.replace(e, raw={"note": None})
    assert match({"sel": {field: True}}, e) is expected
    assert match({"sel": {field: False}}, e) is not expected


def test_a_list_of_mappings_is_an_or() -> None:
    """A selection written as a list of mappings matches when any mapping matches."""
    assert match({"s": [{"actor.user_id": "nope"}, {"actor.ip|startswith": "203."}]})
    assert not match({"s": [{"actor.user_id": "nope"}, {"actor.ip|startswith": "10."}]})


@pytest.mark.parametrize(
    ("detection", "message"),
    [
        ({"s": {"actor.ip|fuzzy": "x"}}, "unknown modifier 'fuzzy'"),
        ({"s": {"actr.ip": "x"}}, "unknown field 'actr.ip'"),
        ({"s": {"actor.email": "x"}}, "unknown field 'actor.email'"),
        ({"s": {"type": "x"}, "condition": "s and t"}, "unknown selection 't'"),
        ({"s": {"type": "x"}, "t": {"type": "y"}}, "required when there is more than one selection"),
        ({"s": {"type": "x"}, "condition": "(s"}, "the condition ends too early"),
        ({"s": {"n|gte": "ten"}}, "unknown field"),
        ({"s": {"attributes.n|gte": "ten"}}, "|gte needs a number"),
        ({"s": {"attributes.n|re": "("}}, "invalid pattern"),
        ({"s": {"actor.ip|cidr": "nonsense"}}, "|cidr"),
        ({"s": {"type|contains|startswith": "x"}}, "cannot be combined"),
        # Sigma wildcards in a plain value: literal text here, so '*curl*' never matched a curl user agent
        ({"s": {"actor.user_agent": "*curl*"}}, "is not a wildcard here"),
        ({"s": {"actor.user_agent": "*curl*"}}, "write actor.user_agent|contains: 'curl'"),
        ({"s": {"target.name|cased": ["x", "adm*"]}}, "write target.name|startswith|cased: 'adm'"),
        ({"s": {"actor.ip": "*.5"}}, "write actor.ip|endswith: '.5'"),
        # Sigma habit: 'true' quoted; a string never equals the boolean Event v1 holds there (it loaded and
        # never matched)
        ({"s": {"actor.via_api": "true"}}, "actor.via_api is a boolean: write true or false, unquoted"),
        ({"s": {"actor.via_api": [True, "false"]}}, "got 'false'"),
        ({"s": "keyword"}, "a selection is a mapping"),
        ({"s": {"type": []}}, "empty"),
        ({"s": {"type": "x"}, "condition": "s $ s"}, "unexpected character"),
    ],
)
def test_invalid_detections_name_the_problem(detection: dict[str, Any], message: str) -> None:
    """A detection that cannot compile raises RuleSyntaxError naming where and why."""
    with pytest.raises(RuleSyntaxError, match=message.replace("(", r"\(").replace("|", r"\|")):
        compile_detection(detection)


@pytest.mark.parametrize("condition", ["(" * 300 + "s" + ")" * 300, "not " * 2000 + "s"])
def test_a_condition_nested_too_deep_is_a_syntax_error_not_a_crash(condition: str) -> None:
    """A condition nesting parentheses or ``not`` hundreds deep (``rules import`` takes Sigma rules from
    outside) ended in a RecursionError traceback; it is refused with the reason, and 64 levels still work."""
    with pytest.raises(RuleSyntaxError, match="nests parentheses or 'not' deeper than 64"):
        compile_detection({"s": {"type": "x"}, "condition": condition})
    assert match({"s": {"actor.ip": "203.0.113.7"}, "condition": "(" * 32 + "not " * 31 + "s" + ")" * 32}) is False
    assert match({"s": {"actor.ip": "203.0.113.7"}, "condition": "(" * 64 + "s" + ")" * 64}) is True


def test_templates_fall_back_and_escape() -> None:
    """Placeholders take the first non-empty alternative; missing ones render 'unknown'; {{ }} are literal."""
    render = compile_template("{actor.api_key_id|actor.user_name} from {actor.ip} {{x}} {attributes.nope}", "summary")
    assert render(ev()) == ("Ann Lee from 203.0.113.7 {x} unknown", False)


CUSTOM = {
    "id": "custom.export_via_api",
    "title": "Lead export through the API",
    "severity": "high",
    "attack": ["T1567"],
    "types": ["audit.*"],
    "activity_codes": [34],
    "detection": {"api": {"actor.via_api": True}, "small": {"attributes.affected_count|lt": 100},
                  "condition": "api and not small"},
    "resolve": {"done": {"attributes.label": "revoked"}},
    "group_by": ["actor.api_key_id"],
    "summary": "Key {actor.api_key_id} exported {attributes.affected_count} leads",
    "entities": [{"kind": "api_key", "id": "{actor.api_key_id}"}],
    "fields": ["attributes.affected_count", "actor.ip"],
}  # fmt: skip


def test_a_yaml_rule_alerts_end_to_end() -> None:
    """An inline custom rule routes, matches, groups, renders and resolves like a built-in one."""
    e = RulesEngine.from_config({"custom": [CUSTOM]}, clock=FakeClock(T0))
    api = {"user_id": None, "api_key_id": "key-7", "ip": "198.51.100.2", "via_api": True}
    hit = make_event("audit.lead_exported", time=T0, actor=api, attributes={"affected_count": 900})
    small = make_event("audit.lead_exported", time=T0 + 1, actor=api, attributes={"affected_count": 5})
    other = make_event("audit.user_login", time=T0 + 2, actor=api)
    clear = make_event(
        "audit.lead_exported", time=T0 + 3, actor=api, attributes={"affected_count": 5, "label": "Revoked"}
    )
    result = e.evaluate([hit, small, other, clear])
    mine = [a for a in result.alerts if a.rule.id == "custom.export_via_api"]
    assert [a.status for a in mine] == ["open", "resolved"]
    a = mine[0]
    assert a.dedup_key == "custom.export_via_api:ws-1:key-7" and a.summary == "Key key-7 exported 900 leads"
    assert a.attributes == {"attributes.affected_count": 900, "actor.ip": "198.51.100.2"}
    assert [(x.kind, x.id) for x in a.entities] == [("api_key", "key-7")] and a.rule.attack == ("T1567",)
    assert all(schema_errors("alert", x.to_dict()) == [] for x in result.alerts)


def test_yaml_rule_types_restrict_routing() -> None:
    """A YAML rule only sees the event types it lists."""
    rule = {**CUSTOM, "types": ["api_key.*"], "activity_codes": None, "resolve": None}
    e = RulesEngine.from_config({"custom": [rule]}, clock=FakeClock(T0))
    hit = make_event("audit.lead_exported", time=T0, actor={"via_api": True}, attributes={"affected_count": 900})
    assert [a for a in e.evaluate([hit]).alerts if a.rule.id == "custom.export_via_api"] == []


WEBHOOK_TO_TUNNEL: dict[str, Any] = {
    "id": "custom.webhook_to_tunnel",
    "title": "Webhook pointing to a tunnel",
    "severity": "high",
    "types": ["webhook.created", "webhook.updated"],
    "detection": {"sel": {"change.after.target_hook_url|contains": ["ngrok", "webhook.site"]}},
    "resolve": {"gone": {"type": "webhook.deleted"}, "condition": "gone"},
    "group_by": ["target.id"],
}


def test_a_resolve_block_naming_its_event_type_resolves_without_resolve_types() -> None:
    """``resolve: {gone: {type: webhook.deleted}}`` on a rule whose ``types`` lists only what opens it
    resolves on ``webhook.deleted``: the resolve block was routed only the rule's ``types``, so it
    compiled, passed validation and never matched (the alert stayed open forever)."""
    e = RulesEngine.from_config({"custom": [WEBHOOK_TO_TUNNEL]}, clock=FakeClock(T0))
    hook = {"kind": "webhook", "id": "w1"}
    opened = make_event(
        "webhook.created", time=T0, target=hook, change={"after": {"target_hook_url": "https://x.ngrok.io"}}
    )
    gone = make_event("webhook.deleted", time=T0 + 1, target=hook)
    mine = [a for a in e.evaluate([opened, gone]).alerts if a.rule.id == WEBHOOK_TO_TUNNEL["id"]]
    assert [a.status for a in mine] == ["open", "resolved"]


@pytest.mark.parametrize(
    ("rule", "where", "named"),
    [
        # a detection selection on a type the rule's types never route to it: it can never match
        ({**WEBHOOK_TO_TUNNEL, "detection": {"sel": {"type": ["webhook.created", "webhook.delted"]}}},
         "detection.sel.type", "'webhook.delted'"),
        ({**WEBHOOK_TO_TUNNEL, "detection": {"a": [{"type": "audit.user_login"}], "condition": "a"}},
         "detection.a.0.type", "'audit.user_login'"),
        # an explicit resolve_types that leaves out the type the resolve block waits for
        ({**WEBHOOK_TO_TUNNEL, "resolve_types": ["webhook.updated"]}, "resolve.gone.type", "'webhook.deleted'"),
    ],
)  # fmt: skip
def test_a_selection_on_a_type_the_rule_is_never_routed_is_refused(
    rule: dict[str, Any], where: str, named: str
) -> None:
    """A ``type`` value outside the rule's ``types`` (detection) or ``resolve_types`` (resolve) is an error
    naming the key path and the types the rule does see, not a selection that silently never matches."""
    with pytest.raises(ConfigError) as ei:
        RulesEngine.from_config({"custom": [rule]}, clock=FakeClock(T0))
    line = f"rules.custom.0 ({rule['id']}).{where}: {named} never reaches the rule"
    assert str(ei.value).startswith(line), str(ei.value)


@pytest.mark.parametrize(
    ("condition", "refused"),
    [
        ("sel and not filter", False),  # the filter only excludes: redundant, not a rule that never fires
        ("sel and not (filter or 1 of fil*)", False),
        ("sel and not not filter", True),  # twice negated: the filter must match, and never can
        ("sel or filter", True),
        ("not (sel and not filter)", True),
    ],
)
def test_an_unrouted_type_is_refused_only_where_the_condition_needs_it(condition: str, refused: bool) -> None:
    """A selection on a type the rule never receives is an error only when the condition reaches it outside a
    ``not``: ``sel and not filter`` with ``filter: {type: webhook.deleted}`` on a ``webhook.created`` rule loaded
    before the unrouted-type check and must still load (it only excludes what never comes)."""
    sel = WEBHOOK_TO_TUNNEL["detection"]["sel"]
    rule = {
        **WEBHOOK_TO_TUNNEL,
        "detection": {"sel": sel, "filter": {"type": "webhook.deleted"}, "condition": condition},
    }
    if not refused:
        e = RulesEngine.from_config({"custom": [rule]}, clock=FakeClock(T0))
        hook = {"kind": "webhook", "id": "w1"}
        ev = make_event(
            "webhook.created", time=T0, target=hook, change={"after": {"target_hook_url": "https://x.ngrok.io"}}
        )
        assert [a.rule.id for a in e.evaluate([ev]).alerts if a.status == "open"] == [rule["id"]]
        return
    with pytest.raises(ConfigError) as ei:
        RulesEngine.from_config({"custom": [rule]}, clock=FakeClock(T0))
    assert "detection.filter.type: 'webhook.deleted' never reaches the rule" in str(ei.value)


def test_activity_codes_without_types_read_only_those_audit_records() -> None:
    """``activity_codes: [34]`` with no ``types`` ("lead exports by a user") opened on a member invitation and a
    pipeline event too: codes only filter audit records and ``types`` defaulted to every type. Such a rule
    (and a correlation entry, or one referencing it) now reads audit records, as its Sigma export (which
    tests ``attributes.activity_code``) always did; explicit ``types`` are kept as written."""
    rule: dict[str, Any] = {"id": "custom.user_export", "title": "Export by a user", "severity": "low",
                            "activity_codes": [34], "detection": {"s": {"actor.user_id|exists": True}}}  # fmt: skip
    corr: dict[str, Any] = {"id": "custom.user_exports", "title": "Exports", "severity": "high",
            "correlation": {"type": "event_count", "group-by": ["actor.user_id"], "timespan": "1h",
                            "condition": {"gte": 2}, "rules": ["custom.user_export"]}}  # fmt: skip
    entry = {k: rule[k] for k in ("activity_codes", "detection")}
    inline = {**corr, "id": "custom.user_exports_inline", "correlation": {**corr["correlation"], "rules": [entry]}}
    e = RulesEngine.from_config({"defaults": {"enabled": False}, "custom": [rule, corr, inline]}, clock=FakeClock(T0))
    user = {"user_id": "u1"}
    export = make_event("audit.lead_exported", time=T0, actor=user)
    others = [
        make_event(t, time=T0 + i + 1, actor=user)
        for i, t in enumerate(["member.invited", "pipeline.stream_unavailable", "audit.user_login"])
    ]
    alerts = e.evaluate([export, *others]).alerts
    assert [(a.rule.id, a.event_ids) for a in alerts] == [("custom.user_export", (export.id,))]
    anything = RulesEngine.from_config({"defaults": {"enabled": False}, "custom": [{**rule, "types": ["*"]}]},
                                       clock=FakeClock(T0))  # fmt: skip
    assert len(anything.evaluate([export, *others]).alerts[0].event_ids) == 3  # explicit "*": as written


def test_a_resolve_block_sees_the_audit_records_activity_codes_leave_out() -> None:
    """TOTP disabled (26) opens, re-enabled (23) resolves: with ``activity_codes: [26]`` the engine routed the rule
    only records 26, so the resolve block never saw 23 and the alert stayed open. The codes still select what
    opens: a login (1) matching the detection opens nothing."""
    rule = {"id": "custom.mfa_off", "title": "MFA off", "severity": "high", "types": ["audit.*"],
            "activity_codes": [26], "detection": {"s": {"actor.user_id|exists": True}},
            "resolve": {"on": {"attributes.activity_code": 23}}, "group_by": ["actor.user_id"]}  # fmt: skip
    e = RulesEngine.from_config({"defaults": {"enabled": False}, "custom": [rule]}, clock=FakeClock(T0))
    user = {"user_id": "u1"}
    off, login, on = (make_event(t, time=T0 + i, actor=user) for i, t in enumerate(
        ["audit.mfa_totp_disabled", "audit.user_login", "audit.mfa_totp_enabled"]))  # fmt: skip
    alerts = e.evaluate([off, login, on]).alerts
    assert [(a.status, a.event_ids) for a in alerts] == [("open", (off.id,)), ("resolved", (on.id,))]
