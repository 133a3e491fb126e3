"""ECS into real OpenSearch with the shipped templates: the scripted incident, every event type, idempotent.

The node is the one ``make test`` starts (``OPENSEARCH_URL``; under ``CI=true`` these tests fail
rather than skip). ``sinks setup`` installs the shipped component and index templates (the test
node has no ISM plugin, so the lifecycle policy is reported as skipped); the scripted incident
of the simulator runs through the real poller and rules onto a SQLite bus, and the sink runner
delivers its events and alerts in ECS into their own data streams.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from connectors.elasticsearch_setup import COMPONENT, TEMPLATES
from pipeline.bus.base import ALERTS_TOPIC, DEADLETTER_TOPIC, EVENTS_TOPIC, Record
from pipeline.bus.sqlite import SqliteBus
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import SinkRunner, decode
from pipeline.rules.testing import make_event
from tests.event_corpus import fixture_events, read_topic, run_incident, webhook_events
from tests.fakes import FakeSleep, publish
from tests.integration.test_opensearch import call, count

pytestmark = pytest.mark.opensearch


@pytest.fixture
async def streams(opensearch_url: str) -> AsyncIterator[tuple[str, str]]:
    """Fresh event and alert data stream names (own namespace); both deleted afterwards."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    names = (f"logs-instantly.audit-{ns}", f"logs-instantly.alerts-{ns}")
    yield names
    async with aiohttp.ClientSession() as http:
        for name in names:
            async with http.delete(f"{opensearch_url}/_data_stream/{name}") as resp:
                assert resp.status in (200, 404)


def ecs_config(url: str, streams: tuple[str, str]) -> ElasticsearchConfig:
    return ElasticsearchConfig.model_validate({"type": "elasticsearch", "url": url, "index": streams[0],
                                               "alert_index": streams[1], "batch_max_records": 50})  # fmt: skip


def as_deliveries(values: list[bytes], topic: str) -> list[Delivery]:
    out = []
    for i, value in enumerate(values):
        d = decode(Record(topic, 0, i, 0, b"ws", value))
        assert not isinstance(d, str), d
        out.append(d)
    return out


async def search(url: str, index: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    await call(url, "POST", f"/{index}/_refresh")
    answer = await call(url, "POST", f"/{index}/_search", {"query": query, "size": 100})
    return [hit["_source"] for hit in answer["hits"]["hits"]]


async def test_setup_is_idempotent_and_the_sink_checks_it(opensearch_url: str, streams: tuple[str, str]) -> None:
    """sinks setup installs the component and both index templates (ISM skipped: no plugin on the test
    node); a second run changes nothing; the installed template is what the sink checks at start."""
    async with ElasticsearchSink("os", ecs_config(opensearch_url, streams)) as sink:
        first = await sink.setup()
        before = await call(opensearch_url, "GET", "/_index_template/logs-instantly.audit")
        second = await sink.setup()
        after = await call(opensearch_url, "GET", "/_index_template/logs-instantly.audit")
        await sink.healthcheck()
    assert before == after and len(first) == len(second) == 5
    assert any("ISM" in line and "skipped" in line for line in first), first
    component = await call(opensearch_url, "GET", f"/_component_template/{COMPONENT}")
    mappings = component["component_templates"][0]["component_template"]["template"]["mappings"]
    assert mappings["properties"]["instantly"]["properties"]["details"]["type"] == "flat_object"
    assert set(TEMPLATES) == {
        t["name"] for t in (await call(opensearch_url, "GET", "/_index_template/logs-instantly.*"))["index_templates"]
    }


async def test_scripted_incident_and_every_event_type_in_ecs(
    opensearch_url: str, streams: tuple[str, str], tmp_path: Path
) -> None:
    """Every event and alert of the scripted incident, plus every event type of the fixtures and the webhook
    receiver, indexed in ECS with the shipped templates: 0 rejected, 0 dead letters; a second delivery of
    the same range answers only 409s; login and API key creation carry source.ip, user.name, category/type."""
    cfg = ecs_config(opensearch_url, streams)
    async with ElasticsearchSink("os", cfg) as sink:
        await sink.setup()
    bus_path = await run_incident(tmp_path / "incident")
    extra = fixture_events() + webhook_events()
    async with SqliteBus(bus_path) as bus:
        await publish(bus, extra)
    async with SqliteBus(bus_path) as bus:
        sink = ElasticsearchSink("os", cfg)
        runner = SinkRunner(bus, sink, cfg, sleep=FakeSleep(), rng=lambda: 1.0)
        async with sink:
            await sink.healthcheck()
            stats = await runner.run_once()
    events, alerts = await read_topic(bus_path, EVENTS_TOPIC), await read_topic(bus_path, ALERTS_TOPIC)
    assert await read_topic(bus_path, DEADLETTER_TOPIC) == []
    assert stats.dead_lettered == 0 and stats.delivered + stats.duplicates == len(events) + len(alerts), stats
    assert len(alerts) >= 6 and len(events) > len(extra)
    event_ids, alert_ids = {orjson.loads(v)["id"] for v in events}, {orjson.loads(v)["id"] for v in alerts}
    assert await count(opensearch_url, streams[0]) == len(event_ids)
    assert await count(opensearch_url, streams[1]) == len(alert_ids)

    # A second delivery of the same range: every item answers 409, nothing is stored twice.
    again = as_deliveries(events, EVENTS_TOPIC) + as_deliveries(alerts, ALERTS_TOPIC)
    async with ElasticsearchSink("os", cfg) as sink:
        raw = await call(opensearch_url, "POST", "/_bulk", ndjson=b"".join(sink.encode(d) for d in again))
        result = await sink.send(again)
    assert {(i["create"]["status"], i["create"]["error"]["type"]) for i in raw["items"]} == {
        (409, "version_conflict_engine_exception")
    }
    assert result.ok and result.duplicates == len(again)
    assert await count(opensearch_url, streams[0]) == len(event_ids)

    def audit(action: str) -> dict[str, Any]:  # the incident's audit-log record of this action
        # The snapshot diff of the same change shares event.action (and carries no actor, so no source.ip);
        # labels.source_kind tells the two apart, so the answer does not depend on the order of hits.
        terms = {"event.action": action, "organization.name": "Acme Outreach", "event.dataset": "instantly.audit",
                 "labels.source_kind": "audit_log"}  # fmt: skip
        return {"bool": {"filter": [{"term": {k: v}} for k, v in terms.items()]}}

    login = await search(opensearch_url, streams[0], audit("user-login"))
    created = await search(opensearch_url, streams[0], audit("api-key-created"))
    for docs, category, etype in ((login, "authentication", "start"), (created, "iam", "creation")):
        assert len(docs) >= 1, category
        for doc in docs:
            assert doc.get("source", {}).get("ip") and doc["user"]["name"], doc
            assert category in doc["event"]["category"] and etype in doc["event"]["type"], doc["event"]
    ip = login[0]["source"]["ip"]
    assert await count(opensearch_url, streams[0], {"term": {"source.ip": ip}}) >= 1
    # ECS multi-fields: one word of a user's or workspace's name finds the document through `.text`.
    word = str(login[0]["user"]["name"]).split()[-1].lower()
    assert await count(opensearch_url, streams[0], {"match": {"user.name.text": word}}) >= 1
    assert await count(opensearch_url, streams[0], {"match": {"organization.name.text": "outreach"}}) >= 1
    alert_docs = await search(opensearch_url, streams[1], {"term": {"event.kind": "alert"}})
    assert len(alert_docs) == len(alerts) and all(d["rule"]["id"] for d in alert_docs)
    assert await count(opensearch_url, streams[0], {"term": {"event.kind": "state"}}) >= 1  # baselines


async def test_replay_to_opensearch_is_idempotent(
    opensearch_url: str, streams: tuple[str, str], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``instantly-audit replay --to`` re-delivers the incident's events and alerts into their ECS data streams;
    a second replay of the same range stores nothing twice."""
    import yaml

    from pipeline.cli.main import build_parser
    from pipeline.config.loader import load_config
    from pipeline.replay.cli import _run, selection_from_args

    bus_path = await run_incident(tmp_path / "incident")
    sink = {"type": "elasticsearch", "url": opensearch_url, "index": streams[0], "alert_index": streams[1]}
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({"bus": {"type": "sqlite", "path": str(bus_path)}, "sinks": {"os": sink}}))
    async with ElasticsearchSink("os", ecs_config(opensearch_url, streams)) as es:
        await es.setup()
    events, alerts = await read_topic(bus_path, EVENTS_TOPIC), await read_topic(bus_path, ALERTS_TOPIC)
    for _ in range(2):
        for topic in ("events", "alerts"):
            args = build_parser().parse_args(
                ["replay", "-c", str(cfg_path), "--topic", topic, "--to", "os", "--no-progress"]
            )
            assert await _run(args, load_config(cfg_path), selection_from_args(args)) == 0
            capsysbinary.readouterr()
    assert await count(opensearch_url, streams[0]) == len({orjson.loads(v)["id"] for v in events})
    assert await count(opensearch_url, streams[1]) == len({orjson.loads(v)["id"] for v in alerts})
    assert await read_topic(bus_path, DEADLETTER_TOPIC) == []


async def test_a_value_too_long_for_one_term_is_indexed_not_dead_lettered(
    opensearch_url: str, streams: tuple[str, str]
) -> None:
    """Lucene refuses a term over 32,766 UTF-8 bytes, and ``flat_object`` (like ``flattened``) indexes every leaf
    of ``instantly.details`` as one term: an audit record whose free-form ``audit_metadata`` holds a 40 KB text
    (or a kept webhook field that long) was answered 400 "immense term" and dead-lettered. It is indexed now,
    the long value kept in ``_source`` under ``instantly.unindexed``; short leftovers stay searchable."""
    long_text, wide_text = "x" * 40_000, "é" * 20_000  # 40,000 and 40,000 UTF-8 bytes
    event = make_event("audit.campaign_update", time=0, attributes={
        "activity_code": 11, "audit_metadata": {"note": long_text, "short": "kept", "wide": [wide_text]}})  # fmt: skip
    cfg = ecs_config(opensearch_url, streams)
    async with ElasticsearchSink("os", cfg) as sink:
        await sink.setup()
        result = await sink.send(as_deliveries([event.to_json()], EVENTS_TOPIC))
    assert result.ok, result.failures[:1]
    [doc] = await search(opensearch_url, streams[0], {"term": {"event.id": event.id}})
    metadata = doc["instantly"]["unindexed"]["attributes"]["audit_metadata"]
    assert metadata == {"note": long_text, "wide": [wide_text]}
    assert doc["instantly"]["details"]["attributes"]["audit_metadata"] == {"short": "kept"}
    found = {"term": {"instantly.details.attributes.audit_metadata.short": "kept"}}
    assert await count(opensearch_url, streams[0], found) == 1
