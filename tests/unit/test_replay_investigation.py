"""``replay`` as an incident responder drives it after a key leak: times pasted from a SIEM (epoch
seconds or milliseconds, ``now``), ``--where FIELD=VALUE`` on the record's fields (the key id, the IP,
an audit code, an alert's event ids), a misspelled ``--type`` or ``--where`` field said instead of a
bare "0 matched", and ``--timeline`` merging the alerts with the events in time order, with the key
and IP each row acted from and the ids to pivot on."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from rich.console import Console

from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.cli.main import main
from pipeline.clock import format_time, parse_time
from pipeline.replay.table import print_table
from schemas import Actor, Event, Source, Target, WorkspaceRef
from schemas.alert import Alert, Entity, RuleRef
from tests.conftest import make_bus

T0 = parse_time("2026-12-03T14:00:00Z")
LEAKED = "019e4d63-a48f-783b-9c45-5809ff4b69c1"
OTHER_KEY = "01a2535b-848f-73e1-9888-a431b42b01dd"
WS = WorkspaceRef("ws-acme", "Acme")


def _event(i: int, kind: str, minutes: int, **kw: Any) -> Event:
    return Event.build(
        type=kind, time=format_time(T0 + minutes * 60), observed_at=format_time(T0 + minutes * 60 + 2),
        workspace=WS, source=Source("audit_log", "audit_logs", f"r{i}"), natural_key=(f"r{i}",), **kw,
    )  # fmt: skip


EVENTS = [
    _event(0, "audit.user_login", 0, actor=Actor(user_id="u-dana", user_name="Dana", ip="198.51.100.24"),
           attributes={"activity_code": 1}),
    _event(1, "audit.api_key_created", 10, actor=Actor(user_id="u-dana", user_name="Dana", api_key_id=LEAKED,
           ip="185.220.101.47", via_api=True), attributes={"activity_code": 37}),
    _event(2, "audit.webhook_created", 20, actor=Actor(user_id="u-dana", user_name="Dana", api_key_id=LEAKED,
           ip="45.155.205.233", via_api=True), target=Target("webhook", "wh-1", None),
           attributes={"activity_code": 18}),
    _event(3, "audit.lead_exported", 30, actor=Actor(user_id="u-dana", user_name="Dana", api_key_id=LEAKED,
           ip="185.220.101.47", via_api=True), attributes={"activity_code": 34, "affected_count": 12000}),
    _event(4, "audit.lead_exported", 40, actor=Actor(user_id="u-lee", user_name="Lee", api_key_id=OTHER_KEY,
           ip="34.235.12.80", via_api=True), attributes={"activity_code": 34, "affected_count": 10}),
]  # fmt: skip
ALERT = Alert.build(
    rule=RuleRef("data.lead_export", 1, "Lead export", "medium"), workspace=WS,
    summary="Dana exported 12000 leads within 60 min", dedup_key="d1", event_ids=(EVENTS[3].id,),
    entities=(Entity("user", "u-dana", "Dana"), Entity("ip", "185.220.101.47")),
    first_seen=format_time(T0 + 30 * 60), last_seen=format_time(T0 + 30 * 60),
)  # fmt: skip
RESOLVED = Alert.build(
    rule=RuleRef("webhook.unauthenticated", 1, "Unauthenticated webhook", "high"), workspace=WS,
    summary="Webhook 'sync' sends no authentication header", dedup_key="w1", event_ids=(EVENTS[2].id,),
    entities=(Entity("webhook", "wh-1", "sync"),), status="resolved",
    first_seen=format_time(T0 + 20 * 60), last_seen=format_time(T0 + 50 * 60),
)  # fmt: skip


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    bus = {"type": "sqlite", "path": str(tmp_path / "bus.db")}

    async def go() -> None:
        async with make_bus(bus) as b, b.transaction("t") as tx:
            for e in EVENTS:
                tx.send(EVENTS_TOPIC, e.to_json(), key=WS.id.encode())
            for a in (ALERT, RESOLVED):
                tx.send(ALERTS_TOPIC, a.to_json(), key=WS.id.encode())

    asyncio.run(go())
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"bus": bus, "workspaces": {"acme": {"api_key": "${IR_UNSET_KEY}"}}}))
    return path


def _replay(cfg: Path, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["replay", "-c", str(cfg), "--format", "jsonl", "--no-progress", *args])
    out, err = capfd.readouterr()
    return code, [orjson.loads(line) for line in out.splitlines() if line.strip()], err


@pytest.mark.parametrize(
    "since",
    [str(int(T0 + 600)), str(int(T0 + 600) * 1000), f"{T0 + 600:.3f}", "2026-12-03 14:10", "2026-12-03T16:10+02:00"],
)
def test_epoch_seconds_and_milliseconds_are_times(cfg: Path, capfd: pytest.CaptureFixture[str], since: str) -> None:
    """A SIEM gives epoch seconds (Splunk ``_time``) or milliseconds (Elastic, browsers): they were
    "is not a time", exit 2."""
    code, got, err = _replay(cfg, capfd, "--since", since, "--until", str(int(T0 + 1800) * 1000))
    assert code == 0, err
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[2].id]
    assert "event time 2026-12-03T14:10:00.000Z to 2026-12-03T14:30:00.000Z (UTC, end excluded)" in err


def test_until_now_and_a_bare_year_is_not_an_epoch(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, got, _ = _replay(cfg, capfd, "--since", "2026-12-03", "--until", "now")
    assert code == 0 and len(got) == 5
    code, _, err = _replay(cfg, capfd, "--since", "2026")
    assert code == 2 and "argument --since: '2026' is not a time" in err


def test_where_filters_on_any_field_of_the_record(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """What did the leaked key do, from which IPs, which exports: a field filter, as in Vector, Elastic
    or Panther; ``--actor`` matches a value in any of four fields and takes one value."""
    code, got, _ = _replay(cfg, capfd, "--where", f"actor.api_key_id={LEAKED}")
    assert code == 0 and [g["id"] for g in got] == [e.id for e in EVENTS[1:4]]
    _, got, _ = _replay(cfg, capfd, "--where", f"actor.api_key_id={LEAKED}", "--where", "attributes.activity_code=34")
    assert [g["id"] for g in got] == [EVENTS[3].id]  # clauses compose (AND); a number matches as typed
    _, got, _ = _replay(cfg, capfd, "--where", "actor.ip=185.220.*")  # a glob
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[3].id]
    _, got, _ = _replay(cfg, capfd, "--where", "actor.ip = 45.155.205.233")  # spaces around = as in a SIEM
    assert [g["id"] for g in got] == [EVENTS[2].id]
    _, got, _ = _replay(cfg, capfd, "--where", "actor.via_api!=true")
    assert [g["id"] for g in got] == [EVENTS[0].id]
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--where", f"event_ids={EVENTS[3].id}")
    assert [g["id"] for g in got] == [ALERT.id]  # from an event to the alerts it raised (a list field)
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--where", "status=resolved")
    assert [g["id"] for g in got] == [RESOLVED.id]
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--where", "entities.id=185.220.101.47")
    assert [g["id"] for g in got] == [ALERT.id]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--where", "actor.ip"], "argument --where: 'actor.ip' is not FIELD=VALUE"),
     (["--where", "acter.ip=1.2.3.4"], "argument --where: 'acter' is not a field of Event v1 (fields: actor, "),
     (["--topic", "alerts", "--where", "type=x"], "'type' is not a field of Alert v1")],
)  # fmt: skip
def test_a_where_on_no_field_of_the_contract_is_a_usage_error(
    cfg: Path, capfd: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, got, err = _replay(cfg, capfd, *args)
    assert code == 2 and got == [] and needle in err and len(err.strip().splitlines()) == 1, err


def test_a_misspelled_type_or_field_is_said_not_reported_as_no_activity(
    cfg: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``--type audit.lead_export`` (the type is ``audit.lead_exported``) said "0 matched", exit 0:
    read as "the key exported nothing"."""
    code, got, err = _replay(cfg, capfd, "--type", "audit.lead_export", "--type", "audit.user_*")
    assert code == 0 and [g["type"] for g in got] == ["audit.user_login"]  # one glob matched: nothing said
    assert "has such a type" not in err
    code, got, err = _replay(cfg, capfd, "--type", "audit.lead_export")
    assert code == 0 and got == []
    assert (
        "replay: --type 'audit.lead_export': no record in the scanned range has such a type; "
        "did you mean 'audit.lead_exported'? (seen: "
    ) in err
    code, got, err = _replay(cfg, capfd, "--where", "actor.ip_address=185.220.101.47")
    assert code == 0 and got == []
    assert "replay: --where 'actor.ip_address=185.220.101.47': no record in the scanned range has the field" in err
    code, got, err = _replay(cfg, capfd, "--where", "actor.ip=10.0.0.1")  # a real field, no such value: no note
    assert code == 0 and got == [] and "no record in the scanned range" not in err


def test_timeline_merges_alerts_with_events_in_time_order(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--timeline KEY`` read only the events topic: the alerts on the key's export never showed."""
    code, got, err = _replay(cfg, capfd, "--timeline", "185.220.101.47")
    assert code == 0, err
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[3].id, ALERT.id]
    assert [g["schema"] for g in got] == ["instantly.event.v1", "instantly.event.v1", "instantly.alert.v1"]
    _, got, _ = _replay(cfg, capfd, "--timeline", "wh-1")  # an alert sorts by its last_seen
    assert [g["id"] for g in got] == [EVENTS[2].id, RESOLVED.id]
    _, got, _ = _replay(cfg, capfd, "--timeline", "185.220.101.47", "--topic", "events")  # one topic when named
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[3].id]
    _, got, err = _replay(cfg, capfd, "--timeline", "185.220.101.47", "--limit", "2")  # the first 2 in time order
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[3].id] and "replay done: 2 matched" in err


def _render(items: list[Any], topic: str, width: int) -> str:
    buf = io.StringIO()
    rec = Record(topic, 0, 0, 0, None, b"")
    print_table([(rec, orjson.loads(x.to_json())) for x in items], topic, console=Console(file=buf, width=width))
    return buf.getvalue()


def test_tables_show_the_key_and_ip_and_the_timeline_shows_alert_rows_and_ids() -> None:
    out = _render([EVENTS[1]], EVENTS_TOPIC, 200)
    assert "time (UTC)" in out and "2026-12-03 14:10:00" in out  # the times are UTC: the header says it
    assert f"Dana key {LEAKED} from 185.220.101.47" in out  # the table showed "Dana" alone
    out = _render([EVENTS[2], RESOLVED], "timeline", 200)
    row = next(line for line in out.splitlines() if "webhook.unauthenticated" in line)
    assert "alert webhook.unauthenticated" in row and "high resolved:" in row and RESOLVED.id in row
    assert EVENTS[2].id in out
    narrow = _render([EVENTS[2], RESOLVED], "timeline", 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "resolved" in narrow


def test_a_resolution_naming_no_entity_follows_its_alert(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Most rules resolve with no entity (``webhook.unauthenticated`` on a deleted webhook): ``--timeline``
    and ``--target`` showed the alert open, never resolved. The resolution shares the alert's dedup key."""
    rule = RuleRef("api_key.all_scope", 1, "all:all key", "critical")
    opened = Alert.build(
        rule=rule, workspace=WS, summary="API key 'backup-sync' has unrestricted access", dedup_key="k-rogue",
        event_ids=(EVENTS[1].id,), entities=(Entity("api_key", "key-rogue", "backup-sync"),),
        first_seen=format_time(T0 + 600), last_seen=format_time(T0 + 600),
    )  # fmt: skip
    closed = Alert.build(
        rule=rule, workspace=WS, summary="API key was deleted", dedup_key="k-rogue", event_ids=(EVENTS[2].id,),
        entities=(), status="resolved", first_seen=format_time(T0 + 600), last_seen=format_time(T0 + 3600),
    )  # fmt: skip
    other = Alert.build(
        rule=rule, workspace=WS, summary="another condition resolved", dedup_key="k-other", event_ids=(),
        entities=(), status="resolved", first_seen=format_time(T0), last_seen=format_time(T0 + 3600),
    )  # fmt: skip

    bus = yaml.safe_load(cfg.read_text())["bus"]

    async def go() -> None:
        async with make_bus(bus) as b, b.transaction("t") as tx:
            for a in (opened, closed, other):
                tx.send(ALERTS_TOPIC, a.to_json(), key=WS.id.encode())

    asyncio.run(go())
    _, got, _ = _replay(cfg, capfd, "--timeline", "key-rogue")
    assert [g["id"] for g in got] == [opened.id, closed.id]
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--target", "key-rogue")
    assert [(g["id"], g["status"]) for g in got] == [(opened.id, "open"), (closed.id, "resolved")]
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--target", "key-rogue", "--where", "status=open")
    assert [g["id"] for g in got] == [opened.id]  # the other filters still apply to the resolution


def test_a_rule_error_dead_letter_is_filtered_not_a_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A ``rule_error`` dead letter names its rule as a string: any filter on ``--topic deadletter``
    (``--since 1d``) ended in ``AttributeError: 'str' object has no attribute 'get'``, a traceback."""
    from pipeline.bus.base import DEADLETTER_TOPIC
    from schemas.deadletter import build

    bus = {"type": "sqlite", "path": str(tmp_path / "bus.db")}
    letters = [
        build(stage="rules", component="rules", component_type="rules", reason="rule_error", rule="api_key.all_scope",
              error="rule_error: boom", failed_at=format_time(T0), value=b'{"n": 1}'),
        build(stage="source", component="crm", component_type="instantly_webhook", reason="bad_shape",
              error="bad_shape: no event_type", failed_at=format_time(T0 + 60), value=b'{"n": 2}'),
    ]  # fmt: skip

    async def go() -> None:
        async with make_bus(bus) as b, b.transaction("t") as tx:
            for letter in letters:
                tx.send(DEADLETTER_TOPIC, letter.to_json(), key=b"ws-a")

    asyncio.run(go())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"bus": bus}))
    code, got, err = _replay(cfg, capfd, "--topic", "deadletter", "--since", "2026-12-03")
    assert code == 0 and len(got) == 2, err
    _, got, _ = _replay(cfg, capfd, "--topic", "deadletter", "--type", "api_key.*")  # the rule of a rule_error
    assert [g["reason"] for g in got] == ["rule_error"]
    _, got, _ = _replay(cfg, capfd, "--topic", "deadletter", "--type", "bad_shape")  # else the reason
    assert [g["reason"] for g in got] == ["bad_shape"]
    out = _render_letters(letters)
    assert "api_key.all_scope" in out and "rules rules: rule_error: boom" in out


def _render_letters(letters: list[Any]) -> str:
    from pipeline.bus.base import DEADLETTER_TOPIC

    buf = io.StringIO()
    rec = Record(DEADLETTER_TOPIC, 0, 0, 0, None, b"")
    items = [(rec, orjson.loads(x.to_json())) for x in letters]
    print_table(items, DEADLETTER_TOPIC, console=Console(file=buf, width=200))
    return buf.getvalue()


def test_severity_is_an_alert_filter(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--severity high`` on the events topic (the default) gave "0 matched", and ``--rules`` or
    ``--to`` with it re-ran or re-sent nothing: events have no severity."""
    code, got, err = _replay(cfg, capfd, "--severity", "high")
    assert code == 2 and got == []
    assert "argument --severity: only alerts have a severity, the events topic has none: use --topic alerts" in err
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--severity", "high")
    assert [g["id"] for g in got] == [RESOLVED.id]
    _, got, _ = _replay(cfg, capfd, "--timeline", "185.220.101.47", "--severity", "high")  # events kept, alert dropped
    assert [g["id"] for g in got] == [EVENTS[1].id, EVENTS[3].id]


def test_actor_and_target_match_whatever_the_case(cfg: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``--actor 'dana'`` for the user name ``Dana`` (or a key id pasted upper-case) gave "0 matched";
    ``--timeline`` already ignored case."""
    _, got, _ = _replay(cfg, capfd, "--actor", "dana", "--type", "audit.lead_exported")
    assert [g["id"] for g in got] == [EVENTS[3].id]
    _, got, _ = _replay(cfg, capfd, "--actor", LEAKED.upper())
    assert [g["id"] for g in got] == [e.id for e in EVENTS[1:4]]
    _, got, _ = _replay(cfg, capfd, "--topic", "alerts", "--target", "WH-1")
    assert [g["id"] for g in got] == [RESOLVED.id]


async def test_redelivery_says_when_the_destination_cannot_deduplicate(
    cfg: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Re-sending a window to a JSONL (or Splunk HEC, syslog) sink said "(of which 0 already present)"
    while the file then held every record twice; an Elasticsearch sink can tell, and says how many."""
    from pipeline.cli.main import build_parser
    from pipeline.config.loader import load_config
    from pipeline.replay.cli import _run, selection_from_args
    from tests.fakes.elasticsearch import FakeElasticsearch

    doc = yaml.safe_load(await asyncio.to_thread(cfg.read_text))
    del doc["workspaces"]  # its key is an unset variable: load_config resolves every secret
    fake = FakeElasticsearch()
    async with fake:
        doc["sinks"] = {
            "archive": {"type": "jsonl", "path": str(tmp_path / "out.jsonl"), "topics": ["events"]},
            "es": {"type": "elasticsearch", "url": fake.url, "index": "ia", "topics": ["events"]},
        }
        await asyncio.to_thread(cfg.write_text, yaml.safe_dump(doc))
        errs: dict[str, list[str]] = {"archive": [], "es": []}
        for sink in ("archive", "archive", "es", "es"):
            args = build_parser().parse_args(["replay", "-c", str(cfg), "--since", "2026-12-03", "--to", sink])
            assert await _run(args, load_config(cfg), selection_from_args(args)) == 0
            errs[sink].append(capfd.readouterr().err)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(EVENTS)  # what the summary now says
    assert "already present" not in errs["archive"][1]
    assert (
        "replay --to archive: delivered 5, failed 0, filtered out by the sink's types/min_severity 0; jsonl does "
        "not de-duplicate by id: records it already had are there twice (de-duplicate on the id field when searching)"
    ) in errs["archive"][1]
    assert "replay --to es: delivered 5 (of which 5 already present)" in errs["es"][1]
    assert "does not de-duplicate" not in errs["es"][1]
