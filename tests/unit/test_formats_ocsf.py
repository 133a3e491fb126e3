"""OCSF 1.9.0: each event family maps to its class, validates against the OCSF schema, and drops nothing.

The 1.9.0 schema is not in ``ocsf-json-schema`` (it stops at 1.8.0): ``tests/fixtures/ocsf-1.9.0``
holds it, compiled from the OCSF schema source (see its README), in the same export shape.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema  # type: ignore[import-untyped]

from pipeline.formats import OCSF_VERSION, to_ocsf
from pipeline.formats._common import epoch_ms
from schemas import Actor, Change, Event, Source, Target
from tests.unit.test_formats_native import SEEN, T0, WS, normalizer_events, sample_alert, sample_events

EXPECTED: dict[str, tuple[int, int]] = {
    "login": (3002, 1),
    "mfa_failed": (3002, 1),
    "totp_enabled": (3007, 12),
    "recovery_codes": (3007, 99),
    "audit_webhook_created": (3004, 1),
    "audit_webhook_error": (3004, 12),
    "audit_key_created": (3007, 18),
    "audit_key_deleted": (3007, 19),
    "campaign_deleted": (6003, 4),
    "lead_exported": (6003, 2),
    "audit_unknown": (6003, 99),
    "key_created": (3007, 18),
    "key_deleted": (3007, 19),
    "key_scopes": (3004, 3),
    "webhook_created": (3004, 1),
    "webhook_updated": (3004, 3),
    "webhook_deleted": (3004, 4),
    "workspace_renamed": (3004, 3),
    "block_removed": (3004, 4),
    "member_invited": (3006, 3),
    "member_accepted": (3006, 99),
    "member_removed": (3006, 4),
    "group_added": (3006, 7),
    "group_removed": (3006, 8),
    "role_up": (3007, 14),
    "role_down": (3007, 15),
    "permissions": (3007, 14),
    "owner_changed": (3007, 14),
    "reply": (0, 99),
    "poller_unauthorized": (0, 99),
}
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


OCSF_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / f"ocsf-{OCSF_VERSION}" / "schema.json"


@functools.cache
def _raw() -> dict[str, Any]:
    if OCSF_FIXTURE.is_file():
        return dict(json.loads(OCSF_FIXTURE.read_text()))
    return dict(get_ocsf_schema(version=OCSF_VERSION))


@functools.cache
def _schema() -> OcsfJsonSchemaEmbedded:
    return OcsfJsonSchemaEmbedded(_raw())


@functools.cache
def _validator(class_uid: int) -> Draft202012Validator:
    schema = _schema().get_class_schema(_schema().lookup_class_name_from_uid(class_uid))
    return Draft202012Validator(schema)


def ocsf_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors plus the sibling rules the JSON Schema cannot express (type_uid, captions)."""
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(doc["class_uid"]).iter_errors(doc)
    ]
    cls = _raw()["classes"][_schema().lookup_class_name_from_uid(doc["class_uid"])]
    if doc["type_uid"] != doc["class_uid"] * 100 + doc["activity_id"]:
        errors.append("type_uid != class_uid * 100 + activity_id")
    if doc.get("class_name") != cls["caption"]:
        errors.append(f"class_name {doc.get('class_name')!r} != {cls['caption']!r}")
    if doc["category_uid"] != cls.get("category_uid", 0):
        errors.append("category_uid does not match the class")
    caption = cls["attributes"]["activity_id"]["enum"][str(doc["activity_id"])]["caption"]
    if doc["activity_id"] != 99 and doc.get("activity_name") != caption:
        errors.append(f"activity_name {doc.get('activity_name')!r} != {caption!r}")
    if doc["metadata"]["version"] != OCSF_VERSION:
        errors.append("metadata.version is not the pinned OCSF version")
    type_caption = f"{cls['caption']}: {caption}" if doc["activity_id"] != 99 else f"{cls['caption']}: Other"
    if doc["class_uid"] != 0 and doc.get("type_name") != type_caption:
        errors.append(f"type_name {doc.get('type_name')!r} is not the type_uid caption {type_caption!r}")
    if "@deprecated" in cls:
        errors.append(f"class {cls['caption']} is deprecated: {cls['@deprecated']['message']}")
    return errors + validator_warnings(doc, cls["attributes"], "")


def validator_warnings(node: dict[str, Any], attrs: dict[str, Any], where: str) -> list[str]:
    """What the OCSF validator warns about and JSON Schema cannot see: deprecated attributes and
    objects, and an enum sibling (``type``, ``status``...) that is not the caption of its id
    (any text may go with 99 Other, except the caption "Other" itself)."""
    out: list[str] = []
    for key, value in node.items():
        spec = attrs.get(key)
        if spec is None or key == "unmapped":
            continue
        if "@deprecated" in spec:
            out.append(f"{where}{key} is deprecated: {spec['@deprecated']['message']}")
        enum, sibling = spec.get("enum"), spec.get("sibling")
        if enum and sibling in node and str(value) in enum:
            caption = enum[str(value)]["caption"]
            if (value == 99) == (node[sibling] == caption):
                out.append(f"{where}{sibling} {node[sibling]!r} does not go with {key}={value} ({caption!r})")
        if spec.get("type") == "object_t" and spec.get("object_type") != "object":
            obj = _raw()["objects"][spec["object_type"]]
            if "@deprecated" in obj:
                out.append(f"{where}{key}: object {spec['object_type']} is deprecated")
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    out += validator_warnings(item, obj["attributes"], f"{where}{key}.")
    return out


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if node is None or node == []:
        return []
    return [(path, node)]


def _at(node: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _values(node: Any) -> list[Any]:
    """Every scalar and every list found anywhere in ``node`` (strings also lower-cased)."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in _values(v)]
    if isinstance(node, list):
        return [node, *(x for v in node for x in _values(v))]
    return [node, node.lower()] if isinstance(node, str) else [node]


def _present(value: Any, values: list[Any]) -> bool:
    if isinstance(value, dict):
        return all(_present(v, values) for v in value.values() if v is not None)
    if isinstance(value, list):
        return value in values or all(_present(v, values) for v in value)
    if isinstance(value, str) and _TS.match(value) and epoch_ms(value) in values:
        return True
    return value in values or str(value) in values or (isinstance(value, str) and value.lower() in values)


def dropped(native: dict[str, Any], out: dict[str, Any], unmapped_key: str, *, mixed: bool = False) -> list[str]:
    """Native leaves found neither under ``out[unmapped_key]`` (same path) nor as a value anywhere in ``out``.

    ``mixed``: the unmapped namespace also holds mapped fields (ECS ``instantly.api_key``), so
    its values count as mapped too.
    """
    values = _values({k: v for k, v in out.items() if mixed or k != unmapped_key})
    original = (out.get("event") or {}).get("original")
    if isinstance(original, str):  # ECS: the raw record (and change.after when it is that record)
        values += _values(json.loads(original))
    unmapped = out.get(unmapped_key) or {}
    missing = []
    for path, value in _leaves(native):
        if path[0] == "raw" and ("raw_data" in out or "original" in (out.get("event") or {})):
            continue  # the raw record travels whole, as a JSON string (OCSF raw_data, ECS event.original)
        if _at(unmapped, path) == value or _present(value, values):
            continue
        missing.append(".".join(path))
    return missing


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_event_family_maps_to_class_and_validates(name: str) -> None:
    """Each event family lands in its OCSF class/activity and validates against the OCSF 1.9.0 schema."""
    event = sample_events()[name]
    doc = to_ocsf(event)
    assert (doc["class_uid"], doc["activity_id"]) == EXPECTED[name]
    assert ocsf_errors(doc) == []
    assert doc["metadata"]["uid"] == event.id
    assert doc["metadata"]["tenant_uid"] == WS.id
    assert doc["time"] == epoch_ms(T0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nothing_is_dropped(name: str) -> None:
    """Every field of the event is either mapped or kept under unmapped; raw travels in raw_data."""
    event = sample_events()[name]
    doc = to_ocsf(event)
    assert dropped(event.to_dict(), doc, "unmapped") == []
    if event.raw is not None:
        assert json.loads(doc["raw_data"]) == event.raw


def test_every_sample_is_classified() -> None:
    """The expectation table covers every sample event."""
    assert set(EXPECTED) == set(sample_events())


def _expected_class(event_type: str, code: int | None) -> int:
    prefix = event_type.split(".")[0]
    if prefix == "audit":
        if code == 1 or (code is not None and 28 <= code <= 31):
            return 3002
        if code in (37, 38) or (code is not None and 22 <= code <= 27):
            return 3007  # User Management: API keys (programmatic credentials), MFA settings
        return 3004 if code in (18, 19, 20, 21) else 6003
    if event_type in ("api_key.created", "api_key.deleted"):
        return 3007
    if event_type in ("member.role_changed", "member.permissions_changed", "workspace.owner_changed"):
        return 3007  # User Management: Assign/Remove Privileges (User Access Management is deprecated)
    return {"member": 3006, "workspace_group": 3006}.get(prefix, 3004)


def test_real_normalizer_events_map_validate_and_drop_nothing() -> None:
    """Events made by the Instantly normalizer (all audit codes, every snapshot change) map, validate, keep all."""
    for event in normalizer_events():
        doc = to_ocsf(event)
        code = event.attributes.get("activity_code")
        assert doc["class_uid"] == _expected_class(event.type, code if isinstance(code, int) else None), event.type
        assert ocsf_errors(doc) == [], event.type
        assert dropped(event.to_dict(), doc, "unmapped") == [], event.type
        assert "sk_live_canary" not in json.dumps(doc)


def test_metadata_event_code_and_processed_time() -> None:
    """metadata.event_code is the original event's identifier, the Instantly activity_type of an audit record
    (its event type then stays in unmapped), else the event type; observed_at, when the pipeline handled the
    record, is processed_time (an intermediate system), not logged_time (the final destination's)."""
    events = sample_events()
    login = to_ocsf(events["login"])
    assert login["metadata"]["event_code"] == "1"
    assert login["unmapped"]["type"] == "audit.user_login"
    assert login["metadata"]["processed_time"] == epoch_ms(SEEN) and "logged_time" not in login["metadata"]
    assert to_ocsf(events["audit_unknown"])["metadata"]["event_code"] == "99"
    key = to_ocsf(events["key_created"])  # a snapshot change has no activity_type: the event type
    assert key["metadata"]["event_code"] == "api_key.created" and "type" not in key.get("unmapped", {})
    assert "logged_time" not in to_ocsf(sample_alert())["metadata"]
    for event in normalizer_events():
        code = event.attributes.get("activity_code")
        if isinstance(code, int):
            assert to_ocsf(event)["metadata"]["event_code"] == str(code), event.type


def _resolve(doc: dict[str, Any], name: str) -> Any:
    """The value at an observable name such as ``users[0].email_addr`` or ``entity.data.target_hook_url``."""
    node: Any = doc
    for part in name.split("."):
        key, _, index = part.partition("[")
        node = node[key]
        if index:
            node = node[int(index.rstrip("]"))]
    return node


def test_observables_name_typed_values_of_the_document() -> None:
    """observables (recommended for every class) list the IPs, user names, email addresses, user agents and URLs
    of the document, each named by its attribute path with the OCSF observable type, each value once."""
    events = sample_events()
    assert to_ocsf(events["login"])["observables"] == [
        {"name": "src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": "203.0.113.9"},
        {"name": "actor.user.name", "type_id": 4, "type": "User Name", "value": "Jane Doe"},
        {"name": "http_request.user_agent", "type_id": 16, "type": "HTTP User-Agent",
         "value": "Mozilla/5.0 (X11; Linux x86_64)"},
    ]  # fmt: skip
    invited = to_ocsf(events["member_invited"])  # the member's name is its email address: listed once, as one
    assert invited["observables"] == [
        {"name": "users[0].email_addr", "type_id": 5, "type": "Email Address", "value": "mallory@example.com"}
    ]
    hook = to_ocsf(events["webhook_created"])  # a URL inside entity.data (json_t) is no schema attribute
    assert not [o for o in hook.get("observables", []) if ".data." in o["name"]]
    key = to_ocsf(events["audit_key_created"])  # the workspace standing in as the key's user is no user name
    assert [o["name"] for o in key["observables"]] == ["src_endpoint.ip"]
    assert "observables" not in to_ocsf(events["poller_unauthorized"])


def test_finding_observables_from_its_entities() -> None:
    """A finding's entities become observables: an IP, a domain, a user name or a member's email address."""
    from schemas import Entity

    ents = (Entity("ip", "198.51.100.7", None), Entity("domain", "competitor.example", None),
            Entity("member", "m-1", "eve@example.com"), Entity("user", "u-1", "Jane Doe"),
            Entity("api_key", "k", "CRM"))  # fmt: skip
    doc = to_ocsf(sample_alert(entities=ents))
    assert [(o["name"], o["type_id"], o["value"]) for o in doc["observables"]] == [
        ("resources[0].uid", 10, "198.51.100.7"),  # resource_uid_t: 10 Resource UID, whatever the value
        ("resources[1].uid", 10, "competitor.example"),
        ("resources[2].name", 38, "eve@example.com"),  # resource_details.name: 38
        ("resources[3].name", 38, "Jane Doe"),
    ]
    assert ocsf_errors(doc) == []


def _schema_observable(doc: dict[str, Any], name: str) -> int | None:
    """The observable type_id the OCSF schema gives the attribute at ``name`` (the object attribute's,
    else its type's); raises KeyError when ``name`` is no attribute path of the schema."""
    raw = _raw()
    attrs = raw["classes"][_schema().lookup_class_name_from_uid(doc["class_uid"])]["attributes"]
    attr: dict[str, Any] = {}
    for part in name.split("."):
        attr = attrs[part.partition("[")[0]]
        attrs = raw["objects"][attr["object_type"]]["attributes"] if attr.get("object_type") else {}
    found = attr.get("observable")
    if found is None:
        found = raw["dictionary"]["types"]["attributes"].get(attr["type"], {}).get("observable")
    return None if found is None else int(found)


def test_every_observable_points_at_its_value() -> None:
    """Across every record the pipeline produces, each observable's name resolves to its value in the same
    document, values are unique, the order is stable, and nothing secret (the canary key) is listed."""
    from tests.unit.test_formats_mapping import corpus

    records = [*corpus(), *(e.to_dict() for e in normalizer_events())]
    counted = 0
    for record in records:
        doc = to_ocsf(record)
        observables = doc.get("observables", [])
        counted += len(observables)
        for obs in observables:
            assert _resolve(doc, obs["name"]) == obs["value"], obs
            assert _schema_observable(doc, obs["name"]) == obs["type_id"], obs  # a schema attribute, its type
        assert len({o["value"] for o in observables}) == len(observables)
        assert to_ocsf(record).get("observables", []) == observables
        assert "sk_live_canary" not in json.dumps(observables)
    assert counted > 0


def test_login_and_mfa_details() -> None:
    """Logins carry the user, source IP, user agent and MFA flag; failed MFA challenges are failures."""
    events = sample_events()
    login = to_ocsf(events["login"])
    assert login["user"]["name"] == "Jane Doe"
    assert login["src_endpoint"] == {"ip": "203.0.113.9"}
    assert login["http_request"]["user_agent"].startswith("Mozilla")
    failed = to_ocsf(events["mfa_failed"])
    assert (failed["status_id"], failed["is_mfa"]) == (2, True)
    totp = to_ocsf(events["totp_enabled"])
    assert (totp["class_name"], totp["activity_name"]) == ("User Management", "Enable MFA Factors")
    assert totp["auth_factors"][0]["is_totp"] is True and totp["user"]["name"] == "Jane Doe"
    codes = to_ocsf(events["recovery_codes"])
    assert (codes["activity_id"], codes["auth_factors"][0]["factor_type"]) == (99, "Recovery Code")


def test_mfa_disable_is_user_management() -> None:
    """TOTP disabled (activity 26) is User Management / Disable MFA Factors (not Authentication / Other)."""
    event = sample_events()["totp_enabled"]
    disabled = msgspec.structs.replace(event, type="audit.mfa_totp_disabled",
                                       attributes={**event.attributes, "activity_type": 26})  # fmt: skip
    doc = to_ocsf(disabled)
    assert (doc["class_uid"], doc["activity_id"], doc["type_uid"]) == (3007, 13, 300713)
    assert ocsf_errors(doc) == []


@pytest.mark.parametrize(
    ("etype", "code", "activity"),
    [("audit.webhook_marked_as_error", 20, (12, "Suspend")), ("audit.webhook_resumed", 21, (13, "Resume")),
     ("webhook.marked_error", None, (12, "Suspend")), ("webhook.suspended", None, (12, "Suspend")),
     ("webhook.resumed", None, (13, "Resume")), ("webhook.disabled", None, (9, "Disable")),
     ("webhook.enabled", None, (8, "Enable"))],
)  # fmt: skip
def test_entity_activities_pair_as_in_ocsf(etype: str, code: int | None, activity: tuple[int, str]) -> None:
    """Entity Management pairs 12 Suspend with 13 Resume and 9 Disable with 8 Enable: a webhook marked as
    error (audit 20) is suspended, so its resumption (audit 21) is the matching Resume."""
    event = sample_events()["audit_webhook_error"]
    attributes = {**event.attributes, "activity_type": code} if code is not None else {}
    changed = msgspec.structs.replace(event, type=etype, attributes=attributes)
    if code is None:  # a snapshot record: no audit raw that would carry an activity_type
        changed = msgspec.structs.replace(changed, source=Source("snapshot", "webhooks", "w-1"), raw=None)
    doc = to_ocsf(changed)
    assert (doc["class_uid"], doc["activity_id"], doc["activity_name"]) == (3004, *activity)
    assert doc["type_name"] == f"Entity Management: {activity[1]}"
    assert ocsf_errors(doc) == []


def test_api_call_with_a_key_names_the_token() -> None:
    """An audit record made through an API key carries it as api.token (OCSF 1.9 token object, API Token)."""
    for event in normalizer_events():
        doc = to_ocsf(event)
        if doc["class_uid"] == 6003 and event.actor is not None and event.actor.api_key_id:
            assert doc["api"]["token"] == {"uid": event.actor.api_key_id, "type_id": 7, "type": "API Token"}
            break
    else:
        pytest.fail("no API activity made with a key among the normalizer events")


def test_api_key_entity_and_programmatic_credential() -> None:
    """API key creation/deletion is User Management / Add|Remove Programmatic Credentials of the workspace;
    an API key acting is a programmatic credential of the actor; scope changes stay entity updates."""
    doc = to_ocsf(sample_events()["audit_key_created"])
    assert (doc["class_uid"], doc["activity_name"]) == (3007, "Add Programmatic Credentials")
    assert doc["user"]["type"] == "Workspace" and doc["user"]["uid"] == doc["metadata"]["tenant_uid"]
    assert doc["actor"]["user"]["programmatic_credentials"] == [
        {"uid": "3f9e0c1a-2b4d-4e6f-8a0b-1c2d3e4f5a6b", "type": "API Key"}
    ]
    created = to_ocsf(sample_events()["key_created"])
    (resource,) = created["resources"]
    assert created["user"]["programmatic_credentials"] == [{"uid": resource["uid"], "type": "API Key"}]
    assert resource["data"]["scopes"] == ["all:all"]
    assert created["unmapped"]["attributes"]["key_fingerprint"] == "sha256:0123abcd"
    assert to_ocsf(sample_events()["key_deleted"])["activity_id"] == 19
    changed = to_ocsf(sample_events()["key_scopes"])
    assert changed["entity"]["data"]["scopes"] == ["all:all"]
    assert changed["updated_entity"]["data"]["scopes"] == ["leads:read"]


def test_programmatic_credential_type_is_one_spelling() -> None:
    """Every programmatic credential (an API key acting, a key created or deleted) is typed "API Key", the
    spelling of OCSF's own example, so one query finds the key wherever it appears."""
    types = set()
    for event in [*normalizer_events(), *sample_events().values()]:
        doc = to_ocsf(event)
        for holder in (doc.get("user"), (doc.get("actor") or {}).get("user")):
            for cred in (holder or {}).get("programmatic_credentials", []):
                types.add(cred["type"])
    assert types == {"API Key"}


def test_role_changes_assign_or_revoke() -> None:
    """A promotion assigns the new role; a demotion revokes the old one; added permissions are assigned."""
    events = sample_events()
    assert to_ocsf(events["role_up"])["privileges"] == ["admin"]
    assert to_ocsf(events["role_down"])["privileges"] == ["owner"]
    assert to_ocsf(events["permissions"])["privileges"] == ["organization.billing"]
    invited = to_ocsf(events["member_invited"])
    assert invited["group"]["uid"] == WS.id
    assert invited["users"][0]["email_addr"] == "mallory@example.com"


def test_group_membership_has_no_group_privileges() -> None:
    """Group Management privileges are "privileges assigned to the group": an invited member's role is not
    one, so it is left out and the role stays in unmapped where the source record had it."""
    for name in ("member_invited", "member_accepted", "member_removed"):
        doc = to_ocsf(sample_events()[name])
        assert doc["class_uid"] == 3006 and "privileges" not in doc, name
        assert ocsf_errors(doc) == [], name
    invited = to_ocsf(sample_events()["member_invited"])
    assert invited["unmapped"]["change"]["after"]["role"] == "admin"
    assert invited["unmapped"]["attributes"]["role"] == "admin"


@pytest.mark.parametrize(
    ("over", "activity", "status"),
    [({}, 1, 1), ({"count": 3}, 2, 1), ({"status": "resolved"}, 3, 4)],
)
def test_alert_is_detection_finding(over: dict[str, Any], activity: int, status: int) -> None:
    """Alerts are Detection Findings: new → Create, repeated → Update, resolved → Close/Resolved."""
    alert = sample_alert(**over)
    doc = to_ocsf(alert)
    assert (doc["class_uid"], doc["activity_id"], doc["status_id"]) == (2004, activity, status)
    assert ocsf_errors(doc) == []
    assert doc["finding_info"]["uid"] == alert.dedup_key
    assert doc["finding_info"]["analytic"]["uid"] == "api_key.all_scope"
    assert doc["finding_info"]["related_events"] == [{"uid": alert.event_ids[0]}]
    assert {a["technique"]["uid"] for a in doc["finding_info"]["attacks"]} == {"T1098"}
    assert (doc["severity_id"], doc["risk_level_id"]) == (5, 4)
    assert doc["remediation"]["references"] == [alert.rule.runbook]
    assert dropped(alert.to_dict(), doc, "unmapped") == []


@pytest.mark.parametrize(
    ("over", "activity"),
    [
        ({"emission": 1, "count": 2}, 1),  # a first alert folding two matches is created, not updated
        ({"emission": 1}, 1),
        ({"emission": 2}, 2),  # the condition alerted again after its suppression window
        ({"emission": 3, "count": 9}, 2),
        ({"emission": 2, "status": "resolved"}, 3),
        ({"count": 2}, 2),  # no emission (a record written before Alert v1 had it): the count rule
    ],
)
def test_finding_activity_follows_the_emission(over: dict[str, Any], activity: int) -> None:
    """Detection Finding activity_id: 1 Create when the finding is first generated (emission 1, whatever its
    count), 2 Update when an existing finding is raised again (emission > 1), 3 Close when resolved."""
    doc = to_ocsf(sample_alert(**over))
    assert doc["activity_id"] == activity and doc["type_uid"] == 200400 + activity
    assert ocsf_errors(doc) == []


def test_incident_findings_are_created_once() -> None:
    """The scripted incident raises each finding once (one record per dedup key), member.unexpected with two
    matches folded in (count 2): every one is a Create."""
    from tests.event_corpus import incident_records

    _, alerts = incident_records()
    assert len({a["dedup_key"] for a in alerts}) == len(alerts)
    assert any(a["count"] > 1 for a in alerts)
    assert {to_ocsf(a)["activity_id"] for a in alerts} == {1}


def test_closed_finding_is_no_alert() -> None:
    """is_alert is true on a new or updated finding and left out on a Close (resolved): OCSF's Detection
    Finding says a Close is likely no alertable signal and omits the attribute or sets it false."""
    assert to_ocsf(sample_alert())["is_alert"] is True
    assert to_ocsf(sample_alert(count=3))["is_alert"] is True
    closed = to_ocsf(sample_alert(status="resolved"))
    assert (closed["activity_id"], closed["status"]) == (3, "Resolved")
    assert "is_alert" not in closed


def test_count_only_on_aggregate_findings() -> None:
    """count is set only when the finding aggregates several events (OCSF: "Only populate for aggregate
    events"); a single-event alert's count of 1 stays under unmapped, so nothing is lost."""
    single = to_ocsf(sample_alert())
    assert "count" not in single and single["unmapped"]["count"] == 1
    repeated = to_ocsf(sample_alert(count=3))
    assert repeated["count"] == 3 and "count" not in repeated.get("unmapped", {})
    assert {"start_time", "end_time"} <= set(repeated)  # the aggregation window goes with count


def test_finding_time_is_when_it_was_first_generated() -> None:
    """Without raised_at (a record written before Alert v1 had it), Detection Finding ``time`` falls back to
    first_seen (the start of an aggregate), not its latest event; end_time and last_seen_time keep last_seen;
    last_seen stands in when first_seen is unreadable."""
    alert = sample_alert(count=3)
    doc = to_ocsf(alert)
    assert (doc["time"], doc["start_time"], doc["end_time"]) == (epoch_ms(T0), epoch_ms(T0), epoch_ms(SEEN))
    assert (doc["finding_info"]["first_seen_time"], doc["finding_info"]["last_seen_time"]) == (
        epoch_ms(T0), epoch_ms(SEEN),
    )  # fmt: skip
    only_last = to_ocsf({**alert.to_dict(), "first_seen": "not a time"})
    assert only_last["time"] == epoch_ms(SEEN) and "start_time" not in only_last
    assert ocsf_errors(doc) == [] and ocsf_errors(only_last) == []


def test_finding_time_is_when_the_engine_raised_it() -> None:
    """With raised_at (when the rules engine raised the alert) the finding ``time`` is that, "not when the
    underlying activity occurred": the events' range stays start_time/end_time. A condition's first alert
    creates the finding (finding_info.created_time), a later one or its close modifies it (modified_time)."""
    raised = "2026-03-05T23:15:00.250Z"
    for over, stamp in (({"emission": 1}, "created_time"), ({"emission": 2}, "modified_time"),
                        ({"emission": 1, "status": "resolved"}, "modified_time")):  # fmt: skip
        alert = sample_alert(count=3, raised_at=raised, **over)
        doc = to_ocsf(alert)
        assert (doc["time"], doc["start_time"], doc["end_time"]) == (epoch_ms(raised), epoch_ms(T0), epoch_ms(SEEN))
        info = doc["finding_info"]
        assert info[stamp] == epoch_ms(raised) and {"created_time", "modified_time"} - {stamp} - set(info)
        assert "raised_at" not in doc.get("unmapped", {}) and doc["unmapped"]["emission"] == over["emission"]
        assert ocsf_errors(doc) == [] and dropped(alert.to_dict(), doc, "unmapped") == []
    from tests.event_corpus import incident_records

    _, alerts = incident_records()  # the real engine: time is when it raised the alert, not the first event
    assert all(to_ocsf(a)["time"] == epoch_ms(a["raised_at"]) for a in alerts)
    assert any(epoch_ms(a["raised_at"]) != epoch_ms(a["first_seen"]) for a in alerts)


@pytest.mark.parametrize(("severity", "sev_id"), [("info", 1), ("low", 2), ("medium", 3), ("high", 4)])
def test_alert_severity_mapping(severity: str, sev_id: int) -> None:
    """Alert severities map onto OCSF severity_id 1-5."""
    from schemas import RuleRef

    rule = RuleRef("member.admin_added", 1, "Admin added", severity, "Check the invite.")  # type: ignore[arg-type]
    doc = to_ocsf(sample_alert(rule=rule))
    assert doc["severity_id"] == sev_id
    assert ocsf_errors(doc) == []
    assert doc["remediation"]["desc"] == "Check the invite."


_TEXT = st.text(min_size=1, max_size=80)
_TYPES = st.sampled_from(
    ["audit.user_login", "audit.activity_77", "api_key.created", "api_key.deleted", "webhook.updated",
     "member.invited", "member.role_changed", "member.removed", "workspace_group.member_added",
     "block_list.entry_removed", "pipeline.poller_unauthorized", "webhook_delivery.lead_interested"]
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.from_regex(r"^[a-z]{1,8}$", fullmatch=True), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    etype=_TYPES,
    name=_TEXT,
    user=st.none() | _TEXT,
    ip=st.sampled_from([None, "198.51.100.7", "2001:db8::1", "not-an-ip", "999.1.1.1"]),
    attrs=st.dictionaries(st.from_regex(r"^[a-z]{1,10}$", fullmatch=True), _JSON, max_size=4),
    before=st.none() | st.dictionaries(st.sampled_from(["role", "name", "note"]), _TEXT, max_size=3),
    after=st.none() | st.dictionaries(st.sampled_from(["role", "name", "note"]), _TEXT, max_size=3),
)
def test_generated_events_validate_and_drop_nothing(
    etype: str,
    name: str,
    user: str | None,
    ip: str | None,
    attrs: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Hypothesis: any event (hostile names, odd IPs, arbitrary attributes) validates and loses no field."""
    event = Event.build(
        type=etype, time=T0, observed_at=SEEN, workspace=WS, source=Source("snapshot", "members", "r1"),
        natural_key=(name,), actor=Actor(user_name=user, ip=ip), target=Target("member", "m1", name),
        change=Change(before, after, ()), attributes=attrs, raw={"name": name},
    )  # fmt: skip
    doc = to_ocsf(event)
    assert ocsf_errors(doc) == []
    assert dropped(event.to_dict(), doc, "unmapped") == []


def test_every_record_the_pipeline_produces_is_valid_ocsf() -> None:
    """Every event type and alert (fixtures, webhook receiver, the scripted incident) validates against 1.9.0."""
    from tests.unit.test_formats_mapping import corpus

    classes: set[int] = set()
    for record in corpus():
        doc = to_ocsf(record)
        classes.add(doc["class_uid"])
        assert ocsf_errors(doc) == [], (record.get("type"), ocsf_errors(doc)[:3])
    assert {2004, 3002, 3004, 3006, 3007, 6003} <= classes
