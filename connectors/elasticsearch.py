"""Elasticsearch / OpenSearch sink (type ``elasticsearch``): ``_bulk`` with ``create`` and ``_id`` = id.

* One ``POST /_bulk`` (``application/x-ndjson``) per batch: ``{"create": {"_index", "_id"}}``
  then the document in ``format`` (default ``ecs``; ``native``, ``ocsf``, ``splunk``) with
  ``@timestamp``. Events go to the ``logs-instantly.audit-default`` data stream, alerts to
  ``logs-instantly.alerts-default``; ``sinks setup`` installs their templates and lifecycle
  policies (:mod:`connectors.es_setup`) and the sink refuses to start without them. ``create`` with the
  event's deterministic id makes delivery idempotent: a replayed event answers 409
  ``version_conflict_engine_exception``, counted as a duplicate (already delivered), so an
  index (a data stream's current backing index) never holds a record twice; a replay after a
  rollover lands in the new backing index (ids are unique per backing index, not per data
  stream). ``create`` is also what data streams require.
* ``index`` (events) and ``alert_index`` (alerts; default ``index``) are a data stream or
  index name, or a pattern with date parts from the record's time: ``audit-{yyyy.MM.dd}``
  (tokens ``yyyy``, ``yy``, ``MM``, ``dd``, ``HH``; UTC).
* A 200 answer may still carry per-item failures (``"errors": true``): items with 429 or 5xx
  are retried (Elastic's guidance, as elasticsearch-py's ``streaming_bulk``); 400/404 items
  (``mapper_parsing_exception``, ``document_parsing_exception``, a missing index...) are
  dead-lettered (Logstash's classification); a 401/403 item means missing privileges and
  fails the batch without retry (circuit), except ``cluster_block_exception`` (disk
  watermark), which is retried. So does a 400 "pipeline with id [...] does not exist": the
  ``pipeline`` option names an ingest pipeline the cluster lacks, which every record would hit
  (``healthcheck()`` checks it with ``GET _ingest/pipeline/<name>``). A whole-request 429
  raises :class:`BackpressureError`; 413 halves the request (a lone document too large is
  dead-lettered); another 4xx on the whole request (bad credentials, wrong URL, malformed
  request) is not retried soon and opens the runner's circuit, since it is about the setup,
  not one record.
* Auth: ``api_key`` (``Authorization: ApiKey <encoded key>``: the ``encoded`` value of the
  create-API-key answer, or ``id:api_key``, which the sink base64-encodes) or ``username`` +
  ``password`` (HTTP Basic). ``healthcheck()`` is ``GET /``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import orjson
from pydantic import Field, field_validator, model_validator

from connectors.elasticsearch_setup import install, missing_templates, required_templates
from pipeline.clock import format_time
from pipeline.config.base import Secret
from pipeline.delivery.base import Delivery, Failure, PreparedBatch, SendResult, SinkConfig
from pipeline.delivery.http import (
    HttpClient,
    HttpResponse,
    HttpSinkConfig,
    millis_time,
    record_time,
    request_body,
    status_error,
    upstream_text,
)
from pipeline.errors import SinkError
from pipeline.formats import dumps, get_format
from pipeline.observability.logs import register_secret

_PART = re.compile(r"\{([^{}]*)\}")
_TOKENS = (("yyyy", "%Y"), ("yy", "%y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"))
_DATA_STREAM = re.compile(r"^(logs|metrics|traces)-([^-]+)-([^-]+)$")
_MISSING_PIPELINE = re.compile(r"pipeline with id \[[^\]]*\] does not exist")
_BAD_INDEX_CHARS = re.compile(r'[\\/*?"<>|,# :A-Z{}]')
# How Elasticsearch and OpenSearch begin a bulk answer in which every item succeeded: "took" first
# (Elasticsearch 7, OpenSearch) or "errors" first (Elasticsearch 8's chunked BulkResponse).
_ALL_CREATED = re.compile(
    rb'\{\s*(?:"errors"\s*:\s*false\s*,'
    rb'|"took"\s*:\s*\d+\s*,\s*(?:"ingest_took"\s*:\s*\d+\s*,\s*)?"errors"\s*:\s*false\s*,)'
)


def index_namer(pattern: str) -> Callable[[float], str]:
    """A function from epoch seconds to the index name ``pattern`` gives (``{yyyy.MM.dd}`` parts).

    Raises:
        ValueError: the pattern has an unknown date token or characters an index name cannot hold.
    """
    pieces: list[str] = []
    last = 0
    for m in _PART.finditer(pattern):
        pieces.append(pattern[last : m.start()].replace("%", "%%"))
        fmt = m.group(1)
        if not fmt:
            raise ValueError(f"empty date part '{{}}' in index pattern {pattern!r}")
        for token, code in _TOKENS:
            fmt = fmt.replace(token, code)
        if re.search(r"[A-Za-z]", re.sub(r"%[YymdH]", "", fmt)):
            raise ValueError(f"index pattern {pattern!r}: date part {{{m.group(1)}}} may use only yyyy yy MM dd HH")
        pieces.append(fmt)
        last = m.end()
    pieces.append(pattern[last:].replace("%", "%%"))
    static = _PART.sub("", pattern)
    if not pattern or _BAD_INDEX_CHARS.search(static) or pattern[0] in "-_+" or pattern in (".", ".."):
        raise ValueError(f'{pattern!r} is not a valid index name (lowercase, no spaces or \\/*?"<>|,#:)')
    fmt = "".join(pieces)
    if fmt == pattern.replace("%", "%%") and "{" not in pattern:
        return lambda _t: pattern
    cache: dict[int, str] = {}

    def name(t: float) -> str:
        hour = int(t // 3600)
        got = cache.get(hour)
        if got is None:
            if len(cache) > 1024:
                cache.clear()
            got = cache[hour] = datetime.fromtimestamp(hour * 3600, tz=UTC).strftime(fmt)
        return got

    return name


class ElasticsearchConfig(HttpSinkConfig):
    """Options of the Elasticsearch / OpenSearch sink."""

    CREDENTIAL_FIELDS: ClassVar[tuple[str, ...]] = ("api_key", "password")

    type: Literal["elasticsearch"] = "elasticsearch"
    DEFAULT_FORMAT: ClassVar[str] = "ecs"

    index: str = Field("logs-instantly.audit-default", description="data stream, index, or pattern with {yyyy.MM.dd}")
    alert_index: str | None = Field("logs-instantly.alerts-default", description="for alerts (null: the events index)")
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    pipeline: str | None = Field(None, description="ingest pipeline to run")
    compression: Literal["gzip", "none"] = "none"
    check_setup: bool = Field(
        True, description="at start, refuse to run when the shipped templates of logs-instantly.* are missing"
    )

    @field_validator("index", "alert_index")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            index_namer(v)
        return v

    @model_validator(mode="after")
    def _auth(self) -> ElasticsearchConfig:
        if self.api_key is not None and (self.username is not None or self.password is not None):
            raise ValueError("give either api_key or username + password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


@dataclass(slots=True)
class _Outcome:
    failures: list[Failure] = field(default_factory=list)
    duplicates: int = 0
    fatal: SinkError | None = None


class ElasticsearchSink:
    """Index events and alerts with the bulk API, idempotently."""

    Config: ClassVar[type[SinkConfig]] = ElasticsearchConfig
    deduplicates_by_id: ClassVar[bool] = True
    """``create`` with the record id as ``_id``: a record already indexed answers 409 (``replay --to`` says so)."""

    def __init__(self, sink_id: str, config: ElasticsearchConfig) -> None:
        self.sink_id = sink_id
        self.config = config
        headers = {"Content-Type": "application/x-ndjson", "Accept": "application/json"}
        if config.api_key is not None:
            key = config.api_key.get_secret_value()
            register_secret(key)
            if ":" in key:  # "id:api_key" as the create-API-key answer gives them; the header wants base64
                register_secret(key.partition(":")[2])
                key = base64.b64encode(key.encode()).decode("ascii")
                register_secret(key)
            headers["Authorization"] = f"ApiKey {key}"
        elif config.username is not None and config.password is not None:
            password = config.password.get_secret_value()
            register_secret(password)
            basic = base64.b64encode(f"{config.username}:{password}".encode()).decode("ascii")
            register_secret(basic)
            headers["Authorization"] = f"Basic {basic}"
        self._post_headers = {"Content-Encoding": "gzip"} if config.compression == "gzip" else {}
        self._http = HttpClient(config, name=f"elasticsearch {sink_id}", headers=headers)
        self._event_index = index_namer(config.index)
        self._alert_index = index_namer(config.alert_index or config.index)
        self._actions: dict[str, bytes] = {}
        self._params = {"pipeline": config.pipeline} if config.pipeline else None
        fmt = config.record_format
        self._render = None if fmt == "native" else get_format(fmt).render
        self._ecs = fmt == "ecs"

    async def __aenter__(self) -> ElasticsearchSink:
        await self._http.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.__aexit__(None, None, None)

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, d: Delivery) -> bytes:
        """The action line and the document line of one record."""
        value = d.body.get("time" if d.kind == "event" else "last_seen")
        fast = millis_time(value)
        if fast is not None:  # valid: record_time would give (fast[0] + millis / 1000, value)
            t: float = fast[0]  # the same hour, all an index name uses
            text: str | None = value
        else:
            t, text = record_time(d)
        index = (self._event_index if d.kind == "event" else self._alert_index)(t)
        action = self._actions.get(index)
        if action is None:  # the action line up to the id; the same bytes as orjson.dumps of the whole line
            if len(self._actions) > 1024:
                self._actions.clear()
            action = self._actions[index] = b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":'
        stamp = text if text is not None and text.endswith("Z") else format_time(t)
        raw = d.raw
        if self._render is not None:
            rendered = self._render(d.body)
            assert isinstance(rendered, dict)
            rendered["@timestamp"] = stamp
            stream = _DATA_STREAM.match(index)
            if stream is not None:
                rendered["data_stream"] = {"type": stream[1], "dataset": stream[2], "namespace": stream[3]}
                event = rendered.get("event")
                if self._ecs and isinstance(event, dict):  # ECS: event.dataset equals data_stream.dataset
                    event["dataset"] = stream[2]  # (the Instantly stream stays in labels.source_stream)
            doc = dumps(rendered)
        elif raw[:1] == b"{" and raw[1:2] != b"}" and b"\n" not in raw and b'"@timestamp"' not in raw:
            doc = b'{"@timestamp":"' + stamp.encode() + b'",' + raw[1:]
        else:
            doc = orjson.dumps({"@timestamp": stamp, **d.body})
        return b"".join((action, orjson.dumps(d.id), b"}}\n", doc, b"\n"))

    async def _body(self, lines: list[bytes]) -> bytes:
        return await request_body(lines, gzip_level=3 if self.config.compression == "gzip" else None)

    async def prepare(self, batch: Sequence[Delivery]) -> PreparedBatch:
        """Encode (and compress) ``batch`` into its ``_bulk`` request, ready for :meth:`send_prepared`."""
        items = list(batch)
        return PreparedBatch(batch, [(items, await self._body([self.encode(d) for d in items]))] if items else [])

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Bulk-create the batch; 409 items count as duplicates.

        Raises:
            SinkError: the whole request failed (429 → BackpressureError; 5xx/transport
                retriable; 401/403/404/redirect not retriable).
        """
        if not batch:
            return SendResult()
        return await self.send_prepared(await self.prepare(batch))

    async def send_prepared(self, prepared: PreparedBatch) -> SendResult:
        """Send a batch :meth:`prepare` encoded; the same contract as :meth:`send`.

        Raises:
            SinkError: as :meth:`send`.
        """
        out = _Outcome()
        for items, body in prepared.requests:
            sub = await self._bulk(items, body)
            if sub.fatal is not None:
                raise sub.fatal
            out.failures += sub.failures
            out.duplicates += sub.duplicates
        return SendResult(failures=out.failures, duplicates=out.duplicates)

    async def _bulk(self, items: list[Delivery], body: bytes) -> _Outcome:
        resp = await self._http.request("POST", "/_bulk", data=body, headers=self._post_headers, params=self._params)
        if resp.status == 200:
            return self._items(items, resp)
        if resp.status == 413:
            return await self._split(items, resp)
        err = status_error(f"elasticsearch {self.sink_id}", "POST /_bulk", resp, self._reason(resp))
        if err.retriable:
            raise err
        return _Outcome(fatal=err)

    async def _split(self, items: list[Delivery], resp: HttpResponse) -> _Outcome:
        """Halve a request that is too large; a single document that is too large is dead-lettered."""
        why = f"POST /_bulk: HTTP {resp.status} ({self._reason(resp)})"
        if len(items) == 1:
            return _Outcome(failures=[Failure(items[0], f"elasticsearch: {why}", retriable=False)])
        half = len(items) // 2
        merged = _Outcome()
        for part in (items[:half], items[half:]):
            sub = await self._bulk(part, await self._body([self.encode(d) for d in part]))
            merged.failures += sub.failures
            merged.duplicates += sub.duplicates
            merged.fatal = merged.fatal or sub.fatal
        return merged

    def _items(self, items: list[Delivery], resp: HttpResponse) -> _Outcome:
        if _ALL_CREATED.match(resp.body, 0, 200) and resp.body[-8:].rstrip().endswith(b"}"):
            return _Outcome()  # "errors": false up front: every item succeeded, no need to read them all
        body = resp.json(f"elasticsearch {self.sink_id}: POST /_bulk")
        if not isinstance(body, dict):
            raise SinkError(f"elasticsearch {self.sink_id}: POST /_bulk: unexpected answer", retriable=True)
        if body.get("errors") is False:
            return _Outcome()
        results = body.get("items")
        if not isinstance(results, list) or len(results) != len(items):
            raise SinkError(
                f"elasticsearch {self.sink_id}: POST /_bulk: {len(results) if isinstance(results, list) else 'no'} "
                f"items answered for {len(items)} sent", retriable=True,
            )  # fmt: skip
        out = _Outcome()
        for d, item in zip(items, results, strict=True):
            result: Any = next(iter(item.values()), {}) if isinstance(item, dict) and item else {}
            status = result.get("status", 0) if isinstance(result, dict) else 0
            if 200 <= status < 300:
                continue
            error = result.get("error") if isinstance(result, dict) else None
            etype = error.get("type", "") if isinstance(error, dict) else str(error or "")
            reason = error.get("reason", "") if isinstance(error, dict) else ""
            text = f"elasticsearch: item {status} {etype}: {str(reason)[:300]}".rstrip(": ")
            if status == 409:
                out.duplicates += 1
            elif status == 400 and _MISSING_PIPELINE.search(str(reason)):  # the setup: every record would fail
                out.fatal = out.fatal or self._missing_pipeline()
            elif status in (401, 403) and etype != "cluster_block_exception":
                out.fatal = out.fatal or SinkError(f"elasticsearch {self.sink_id}: {text}", retriable=False)
            elif status in (400, 404):
                out.failures.append(Failure(d, text, retriable=False))
            else:
                out.failures.append(Failure(d, text, retriable=True, retry_after=resp.retry_after))
        return out

    def _missing_pipeline(self) -> SinkError:
        return SinkError(
            f"elasticsearch {self.sink_id}: ingest pipeline {self.config.pipeline!r} does not exist; create it "
            "(PUT _ingest/pipeline/<name>) or change the sink's pipeline",
            retriable=False,
        )

    @staticmethod
    def _reason(resp: HttpResponse) -> str:
        try:
            body: Any = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return resp.text(120)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return upstream_text(f"{error.get('type', '')}: {str(error.get('reason', ''))[:200]}")
        return upstream_text(str(error), 200) if error else ""

    async def setup(self) -> list[str]:
        """Install the shipped index templates and lifecycle policies (idempotent); what was done.

        Raises:
            SinkError: the cluster refused one of them (missing privileges, bad body).
        """
        return await install(self._http, f"elasticsearch {self.sink_id}")

    async def healthcheck(self) -> None:
        """Check the cluster answers ``GET /`` with these credentials and the templates are installed.

        Raises:
            SinkError: unreachable, the credentials are refused, or a shipped index template the
                configured data streams need is missing (run ``instantly-audit sinks setup``).
        """
        resp = await self._http.request("GET", "/")
        if resp.status != 200:
            raise status_error(f"elasticsearch {self.sink_id}", "GET /", resp, self._reason(resp))
        info = resp.json(f"elasticsearch {self.sink_id}: GET /")
        if not isinstance(info, dict) or "version" not in info:
            raise SinkError(f"elasticsearch {self.sink_id}: GET / did not answer like Elasticsearch/OpenSearch")
        if self.config.pipeline:
            resp = await self._http.request("GET", f"/_ingest/pipeline/{quote(self.config.pipeline, safe='')}")
            if resp.status == 404:  # another answer (no read_pipeline privilege...): delivery will tell
                raise self._missing_pipeline()
        if self.config.check_setup:
            who = f"elasticsearch {self.sink_id}"
            needed = required_templates(self.config.index, self.config.alert_index)
            missing = await missing_templates(self._http, needed, who)
            if missing:
                raise SinkError(
                    f"{who}: index template {', '.join(missing)} is not installed; run "
                    f"'instantly-audit sinks setup {self.sink_id} --config FILE' (or set check_setup: false)",
                    retriable=False,
                )
