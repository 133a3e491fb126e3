"""Elasticsearch sink against the fake cluster: bulk create by id, per-item errors, 429, index names, auth."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from connectors.elasticsearch import ElasticsearchConfig, ElasticsearchSink, index_namer
from connectors.elasticsearch_setup import assets
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.clock import format_time
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.errors import BackpressureError, SinkError
from pipeline.formats import to_ecs
from tests.fakes import BASE_TIME, Faults, make_alert, make_event
from tests.fakes.elasticsearch import FakeElasticsearch

API_KEY = "ZXMta2V5LWlkOmVzLWtleS1zZWNyZXQ="


def ev(i: int, **kw: Any) -> Delivery:
    d = decode(Record(EVENTS_TOPIC, 0, i, 0, b"ws-1", make_event(i, **kw).to_json()))
    assert not isinstance(d, str)
    return d


def al(i: int) -> Delivery:
    d = decode(Record(ALERTS_TOPIC, 0, i, 0, b"ws-1", make_alert(i).to_json()))
    assert not isinstance(d, str)
    return d


def es_cfg(url: str, **kw: Any) -> ElasticsearchConfig:
    block: dict[str, Any] = {"type": "elasticsearch", "url": url, "api_key": EnvValue(API_KEY), **kw}
    return ElasticsearchConfig.model_validate(block)


@pytest.fixture
async def es() -> AsyncIterator[FakeElasticsearch]:
    async with FakeElasticsearch(api_key=API_KEY) as server:
        yield server


async def test_bulk_create_with_id_into_data_stream(es: FakeElasticsearch) -> None:
    """By default events go to logs-instantly.audit-default and alerts to logs-instantly.alerts-default, as
    ECS documents with _id = the record id, @timestamp from its time and the data_stream fields; ECS wants
    event.dataset equal to data_stream.dataset."""
    async with ElasticsearchSink("es", es_cfg(es.url)) as s:
        assert (await s.send([ev(1), al(2)])).ok
    events, alerts = es.docs["logs-instantly.audit-default"], es.docs["logs-instantly.alerts-default"]
    assert set(events) == {make_event(1).id} and set(alerts) == {make_alert(2).id}
    doc = events[make_event(1).id]
    ecs = to_ecs(make_event(1))
    assert doc == {**ecs, "event": {**ecs["event"], "dataset": "instantly.audit"},
                   "@timestamp": format_time(BASE_TIME + 1),
                   "data_stream": {"type": "logs", "dataset": "instantly.audit", "namespace": "default"}}  # fmt: skip
    assert alerts[make_alert(2).id]["event"]["kind"] == "alert"
    assert alerts[make_alert(2).id]["event"]["dataset"] == alerts[make_alert(2).id]["data_stream"]["dataset"]


async def test_native_format_sends_the_bus_json(es: FakeElasticsearch) -> None:
    """format: native sends the record exactly as on the bus, plus @timestamp."""
    async with ElasticsearchSink("es", es_cfg(es.url, format="native")) as s:
        assert (await s.send([ev(1)])).ok
    doc = es.docs["logs-instantly.audit-default"][make_event(1).id]
    assert doc == {"@timestamp": format_time(BASE_TIME + 1), **make_event(1).to_dict()}


async def test_setup_installs_templates_and_policies_idempotently(es: FakeElasticsearch) -> None:
    """setup() PUTs the component template, both index templates and ILM policies; again changes nothing;
    the health check refuses to start while the templates are missing and passes once they are there."""
    es.setup.clear()
    async with ElasticsearchSink("es", es_cfg(es.url)) as s:
        with pytest.raises(SinkError, match=r"logs-instantly\.audit, logs-instantly\.alerts is not installed") as info:
            await s.healthcheck()
        assert "sinks setup es" in str(info.value) and not info.value.retriable
        first = await s.setup()
        installed = dict(es.setup)
        second = await s.setup()
        await s.healthcheck()
    assert len(first) == len(second) == 5 and es.setup == installed
    assert installed == {k: v for k, v in assets("elasticsearch").items()}
    template = installed["_index_template/logs-instantly.alerts"]
    assert template["index_patterns"] == ["logs-instantly.alerts-*"] and template["data_stream"] == {}


async def test_custom_index_needs_no_templates(es: FakeElasticsearch) -> None:
    """An index outside logs-instantly.* is not checked for the shipped templates."""
    es.setup.clear()
    async with ElasticsearchSink("es", es_cfg(es.url, index="audit-{yyyy.MM}", alert_index=None)) as s:
        await s.healthcheck()


async def test_replay_counts_duplicates_not_failures(es: FakeElasticsearch) -> None:
    """Sending the same events again answers 409 per item: counted as duplicates, nothing stored twice."""
    batch = [ev(i) for i in range(5)]
    async with ElasticsearchSink("es", es_cfg(es.url)) as s:
        await s.send(batch[:3])
        result = await s.send(batch)
    assert result.ok and result.duplicates == 3
    assert len(es.ids) == 5 and max(es.created.values()) == 1


async def test_item_errors_are_classified(es: FakeElasticsearch) -> None:
    """Mapping errors are poison; rejected (429) and unavailable (503) items are retried."""
    es.reject = lambda doc: doc["attributes"]["n"] == 1
    es.item_fault_rate = 0.0
    async with ElasticsearchSink("es", es_cfg(es.url, format="native")) as s:
        result = await s.send([ev(0), ev(1), ev(2)])
        assert [(f.delivery.id, f.retriable) for f in result.failures] == [(make_event(1).id, False)]
        assert "document_parsing_exception" in result.failures[0].error
        es.reject, es.item_fault_rate = None, 1.0
        result = await s.send([ev(3), ev(4)])
    assert len(result.failures) == 2 and all(f.retriable for f in result.failures)
    assert all(("429" in f.error) or ("503" in f.error) for f in result.failures)


async def test_whole_request_429_is_backpressure(es: FakeElasticsearch) -> None:
    """A 429 on the whole bulk raises BackpressureError with Retry-After."""
    es.overload_rate, es.faults = 1.0, Faults(retry_after=4)
    async with ElasticsearchSink("es", es_cfg(es.url)) as s:
        with pytest.raises(BackpressureError) as info:
            await s.send([ev(1)])
    assert info.value.retry_after == 4 and "es_rejected_execution_exception" in str(info.value)


async def test_bad_api_key_is_fatal_and_secret_free(es: FakeElasticsearch) -> None:
    """401 is not retriable and the message never holds the key."""
    async with ElasticsearchSink("es", es_cfg(es.url, api_key=EnvValue("d3JvbmctaWQ6d3Jvbmcta2V5"))) as s:
        with pytest.raises(SinkError) as info:
            await s.send([ev(1)])
    assert not info.value.retriable and "security_exception" in str(info.value)
    assert "d3JvbmctaWQ6d3Jvbmcta2V5" not in repr(info.value)


async def test_api_key_as_id_and_key_is_base64_encoded() -> None:
    """``Authorization: ApiKey`` carries base64(id:api_key); an ``id:api_key`` value is encoded, not sent raw."""
    raw = "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"
    async with FakeElasticsearch(api_key=base64.b64encode(raw.encode()).decode()) as server:
        async with ElasticsearchSink("es", es_cfg(server.url, api_key=EnvValue(raw))) as s:
            assert (await s.send([ev(1)])).ok
        assert server.docs


def test_all_created_answer_is_recognised_in_both_field_orders() -> None:
    """Elasticsearch 8 writes ``errors`` before ``took``, 7.x and OpenSearch after: both mean "all created"."""
    from connectors.elasticsearch import _ALL_CREATED

    item = b'{"create":{"_index":"i","_id":"a","status":201}}'
    for head in (
        b'{"errors":false,"took":3,',
        b'{"took":3,"errors":false,',
        b'{"took":3,"ingest_took":0,"errors":false,',
    ):
        assert _ALL_CREATED.match(head + b'"items":[' + item + b"]}")
    for head in (b'{"errors":true,"took":3,', b'{"took":3,"errors":true,'):
        assert not _ALL_CREATED.match(head + b'"items":[' + item + b"]}")


async def test_basic_auth() -> None:
    """username + password authenticate with HTTP Basic."""
    async with FakeElasticsearch(basic=("elastic", "pw-123")) as es:
        cfg = ElasticsearchConfig.model_validate({"type": "elasticsearch", "url": es.url, "username": "elastic",
                                                  "password": EnvValue("pw-123")})  # fmt: skip
        async with ElasticsearchSink("es", cfg) as s:
            assert (await s.send([ev(1)])).ok
            await s.healthcheck()


async def test_daily_index_pattern_and_alert_index(es: FakeElasticsearch) -> None:
    """{yyyy.MM.dd} takes the date from the record's time; alerts can go to their own index."""
    cfg = es_cfg(es.url, index="instantly-audit-{yyyy.MM.dd}", alert_index="instantly-alerts")
    async with ElasticsearchSink("es", cfg) as s:
        assert (await s.send([ev(1), ev(86_400), al(3)])).ok
    assert set(es.docs) == {"instantly-audit-2026.05.28", "instantly-audit-2026.05.29", "instantly-alerts"}


def test_index_namer_tokens() -> None:
    """Date tokens render in UTC; a plain name is returned as is."""
    assert index_namer("a-{yyyy.MM.dd}")(0) == "a-1970.01.01"
    assert index_namer("a-{yy}-{MM}-{HH}")(3600 * 25) == "a-70-01-01"
    assert index_namer("logs-x-default")(123) == "logs-x-default"


async def test_action_line_is_create_with_id(es: FakeElasticsearch) -> None:
    """Each document is preceded by a create action naming the index and the record id."""
    async with ElasticsearchSink("es", es_cfg(es.url)) as s:
        line = s.encode(ev(1))
    assert line.startswith(b'{"create":{"_index":"logs-instantly.audit-default","_id":"')


async def test_oversized_bulk_is_split() -> None:
    """413 halves the request until the documents fit; a lone giant document is dead-lettered."""

    class Small(FakeElasticsearch):
        async def bulk(self, request: web.Request) -> web.Response:
            if (request.content_length or 0) > 3000:
                return web.Response(status=413)
            return await super().bulk(request)

    async with Small(api_key=API_KEY) as es:
        batch = [ev(i) for i in range(8)] + [ev(99, pad=4000)]
        async with ElasticsearchSink("es", es_cfg(es.url)) as s:
            result = await s.send(batch)
    assert [f.delivery.id for f in result.failures] == [batch[-1].id] and not result.failures[0].retriable
    assert sorted(es.ids) == sorted(d.id for d in batch[:-1])


async def test_healthcheck_names_a_refused_key(es: FakeElasticsearch) -> None:
    """GET / with the credentials must answer like a cluster: a refused key fails with its status."""
    async with ElasticsearchSink("es", es_cfg(es.url, api_key=EnvValue("bm9wZQ=="))) as s:
        with pytest.raises(SinkError, match="HTTP 401"):
            await s.healthcheck()


async def test_gzip_request_bodies(es: FakeElasticsearch) -> None:
    """compression: gzip sends Content-Encoding gzip bodies the cluster accepts."""
    async with ElasticsearchSink("es", es_cfg(es.url, compression="gzip")) as s:
        assert (await s.send([ev(i) for i in range(50)])).ok
    assert len(es.ids) == 50


def test_shipped_json_is_what_setup_installs() -> None:
    """deploy/elasticsearch/ holds exactly the bodies setup() PUTs (regenerate with
    ``python -m connectors.elasticsearch_setup deploy/elasticsearch``)."""
    import json
    from pathlib import Path

    from connectors.elasticsearch_setup import asset_files

    root = Path(__file__).resolve().parents[2] / "deploy" / "elasticsearch"
    expected = asset_files(root)
    assert sorted(root.rglob("*.json")) == sorted(expected)
    for path, body in expected.items():
        assert json.loads(path.read_text()) == body, path


# The ECS 8.17 type of every ECS field the formatter emits (elastic/ecs generated/ecs/ecs_flat.yml).
ECS_TYPES = {
    "date": ("@timestamp", "event.created", "event.start", "event.end"),
    "match_only_text": ("message",),
    "long": ("event.severity",),
    "float": ("event.risk_score",),
    "ip": ("source.ip", "related.ip"),
    "constant_keyword": ("data_stream.type", "data_stream.dataset", "data_stream.namespace"),
    "keyword": (
        "ecs.version", "event.kind", "event.category", "event.type", "event.action", "event.id", "event.outcome",
        "event.module", "event.provider", "event.dataset", "event.code", "event.reference", "event.original",
        "organization.id", "organization.name", "user.id", "user.name", "user.email", "user.target.id",
        "user.target.name", "user.target.email", "user.target.roles", "user.changes.roles", "related.user",
        "user_agent.original",
        "rule.id", "rule.name", "rule.version", "rule.description", "rule.reference", "rule.ruleset",
        "threat.framework", "threat.technique.id", "threat.technique.subtechnique.id",
    ),
}  # fmt: skip
# OpenSearch has neither match_only_text nor (before 2.14) constant_keyword: the nearest types there.
OPENSEARCH_TYPE = {"match_only_text": "text", "constant_keyword": "keyword"}


@pytest.mark.parametrize("flavor", ["elasticsearch", "opensearch"])
def test_template_maps_ecs_fields_with_their_ecs_types(flavor: str) -> None:
    """Every ECS field of the component template has the type ecs_flat.yml gives it (rule.description: keyword)."""
    from connectors.elasticsearch_setup import component_template

    props = component_template(flavor)["template"]["mappings"]["properties"]  # type: ignore[arg-type]

    def mapped(path: str) -> str:
        node = props
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]["properties"]
        return str(node[leaf]["type"])

    for ecs_type, paths in ECS_TYPES.items():
        want = OPENSEARCH_TYPE.get(ecs_type, ecs_type) if flavor == "opensearch" else ecs_type
        assert {p: mapped(p) for p in paths} == dict.fromkeys(paths, want)
    # ecs_flat.yml's multi_fields: a `text` sub-field (match_only_text) under these keywords.
    text = "match_only_text" if flavor == "elasticsearch" else "text"
    for path in ("organization.name", "user.name", "user.target.name", "user_agent.original"):
        node = props
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]["properties"]
        assert node[leaf]["type"] == "keyword" and node[leaf]["fields"] == {"text": {"type": text}}, path


async def test_missing_ingest_pipeline_opens_the_circuit_instead_of_dead_lettering_everything(
    es: FakeElasticsearch,
) -> None:
    """``pipeline:`` naming an ingest pipeline the cluster lacks: Elasticsearch refuses every item with 400
    "pipeline with id [...] does not exist". That is the setup, not the records: the batch fails for good
    (the runner's circuit opens, nothing dead-lettered) and the health check names it; once it exists, all go."""
    async with ElasticsearchSink("e", es_cfg(es.url, pipeline="instantly-enrich")) as sink:
        with pytest.raises(SinkError) as sent:
            await sink.send([ev(0), ev(1)])
        with pytest.raises(SinkError) as checked:
            await sink.healthcheck()
        for err in (sent.value, checked.value):
            assert not err.retriable and "instantly-enrich" in str(err) and "does not exist" in str(err), str(err)
        es.ingest_pipelines.add("instantly-enrich")
        await sink.healthcheck()
        assert (await sink.send([ev(0), ev(1)])).ok
    assert len(es.ids) == 2
    assert all(doc["ingested_by"] == "instantly-enrich" for docs in es.docs.values() for doc in docs.values())
