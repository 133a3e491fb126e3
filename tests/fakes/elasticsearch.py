"""A fake Elasticsearch speaking the ``_bulk`` protocol, with its failure modes.

* Auth: ``ApiKey <key>`` or HTTP Basic; otherwise 401 ``security_exception``.
* ``POST /_bulk`` (and ``/{index}/_bulk``): ``application/x-ndjson``, must end with a newline
  (else 400 ``illegal_argument_exception``), action/source line pairs. ``create`` with an
  existing ``_id`` answers item 409 ``version_conflict_engine_exception``; data streams
  (names matching ``logs-*-*``) accept only ``create`` and need ``@timestamp``.
* Failure modes: ``item_fault_rate`` (items answered 429 ``es_rejected_execution_exception``
  or 503), ``reject`` (items answered 400 ``document_parsing_exception``), ``overload_rate``
  (whole request 429), ``block`` (``"flood_stage"``: every item answered 429
  ``cluster_block_exception``, the ``read_only_allow_delete`` block Elasticsearch puts on an index
  past the disk flood-stage watermark; ``"cluster_read_only"``: the whole request answered 403
  ``cluster_block_exception``, the global ``cluster.blocks.read_only`` block), and the shared
  :class:`Faults`.
* Ingest pipelines: ``?pipeline=NAME`` on ``_bulk`` runs one of ``ingest_pipelines`` (each
  document gets ``"ingested_by": NAME``); an unknown one answers every item 400
  ``illegal_argument_exception`` "pipeline with id [NAME] does not exist", as Elasticsearch does;
  ``GET /_ingest/pipeline/NAME`` answers 200 or 404 ``{}``.
* ``GET /`` answers the cluster banner.
"""

from __future__ import annotations

import base64
import fnmatch
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer, Faults, json_error

Reject = Callable[[dict[str, Any]], bool]


def _err(status: int, etype: str, reason: str) -> web.Response:
    return json_error(status, {"error": {"root_cause": [{"type": etype, "reason": reason}], "type": etype,
                                         "reason": reason}, "status": status})  # fmt: skip


class FakeElasticsearch(FakeServer):
    """Elasticsearch on 127.0.0.1."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        basic: tuple[str, str] | None = None,
        faults: Faults | None = None,
        item_fault_rate: float = 0.0,
        overload_rate: float = 0.0,
        reject: Reject | None = None,
        data_streams: tuple[str, ...] = ("logs-*-*",),
        block: str | None = None,
        ingest_pipelines: tuple[str, ...] = (),
    ) -> None:
        super().__init__(faults)
        self.api_key = api_key
        self.basic = basic
        self.item_fault_rate = item_fault_rate
        self.overload_rate = overload_rate
        self.reject = reject
        self.data_streams = data_streams
        self.block = block
        self.ingest_pipelines = set(ingest_pipelines)
        self.blocked_items = 0
        # API path (``_index_template/NAME``, ``_ilm/policy/NAME``...) → body PUT; the shipped
        # index templates count as installed (clear ``setup`` for a fresh cluster).
        self.setup: dict[str, Any] = {f"_index_template/logs-instantly.{n}": {} for n in ("audit", "alerts")}
        self.setup_puts = 0
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.created: Counter[str] = Counter()
        self.conflicts = 0
        self.item_faults = 0
        self.after_fault_created = 0  # created, then answered 500: the client's resend will get 409s

    @property
    def ids(self) -> list[str]:
        """Ids of every stored document (one per (index, id))."""
        return [i for docs in self.docs.values() for i in docs]

    def app(self) -> web.Application:
        """Routes."""
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_get("/", self.banner)
        app.router.add_post("/_bulk", self.bulk)
        app.router.add_post("/{index}/_bulk", self.bulk)
        app.router.add_get("/_ingest/pipeline/{name}", self.get_pipeline)
        for prefix in ("_index_template", "_component_template", "_ilm/policy"):
            app.router.add_get(f"/{prefix}/{{name}}", self.get_setup)
            app.router.add_put(f"/{prefix}/{{name}}", self.put_setup)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if self.api_key is not None and scheme == "ApiKey" and value == self.api_key:
            return None
        if self.basic is not None and scheme == "Basic":
            try:
                user, _, pw = base64.b64decode(value).decode().partition(":")
            except ValueError:
                user, pw = "", ""
            if (user, pw) == self.basic:
                return None
        if self.api_key is None and self.basic is None:
            return None
        if not header:
            reason = f"missing authentication credentials for REST request [{request.path}]"
            return _err(401, "security_exception", reason)
        return _err(401, "security_exception", "unable to authenticate with provided credentials")

    async def get_setup(self, request: web.Request) -> web.Response:
        """``GET /_index_template/NAME`` (and component templates, ILM policies): 404 when absent."""
        denied = self._auth(request)
        if denied is not None:
            return denied
        key = request.path.lstrip("/")
        if key not in self.setup:
            return _err(404, "resource_not_found_exception", f"{key} not found")
        return json_error(200, {"found": self.setup[key]})

    async def put_setup(self, request: web.Request) -> web.Response:
        """``PUT /_index_template/NAME`` (and component templates, ILM policies): stores the body."""
        denied = self._auth(request)
        if denied is not None:
            return denied
        self.setup_puts += 1
        self.setup[request.path.lstrip("/")] = json.loads(await request.read())
        return json_error(200, {"acknowledged": True})

    async def get_pipeline(self, request: web.Request) -> web.Response:
        """``GET /_ingest/pipeline/NAME``: 200 with its definition, 404 ``{}`` when it does not exist."""
        denied = self._auth(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        if name not in self.ingest_pipelines:
            return json_error(404, {})
        return json_error(200, {name: {"processors": []}})

    async def banner(self, request: web.Request) -> web.Response:
        """``GET /``."""
        denied = self._auth(request)
        if denied is not None:
            return denied
        return json_error(200, {"name": "fake", "cluster_name": "fake", "cluster_uuid": "x",
                                "version": {"number": "8.15.0", "build_flavor": "default"},
                                "tagline": "You Know, for Search"})  # fmt: skip

    async def bulk(self, request: web.Request) -> web.Response:
        """``POST /_bulk``."""
        self.requests += 1
        await self.faults.delay()
        denied = self._auth(request)
        if denied is not None:
            return denied
        fate = self.faults.roll()
        if self.faults.down or fate == "before":
            return _err(503, "unavailable_shards_exception", "primary shard is not active")
        if self.faults.rng.random() < self.overload_rate:
            resp = _err(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
            resp.headers.update(self.faults.headers())
            return resp
        if self.block == "cluster_read_only":
            return _err(403, "cluster_block_exception", "blocked by: [FORBIDDEN/6/cluster read-only (api)];")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in ("application/x-ndjson", "application/json"):
            return json_error(406, {"error": f"Content-Type header [{ctype}] is not supported", "status": 406})
        text = (await request.read()).decode("utf-8")
        if not text.endswith("\n"):
            return _err(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        lines = text.splitlines()
        if len(lines) % 2:
            return _err(400, "illegal_argument_exception", "Malformed action/metadata line")
        items: list[dict[str, Any]] = []
        default_index = request.match_info.get("index")
        for a, s in zip(lines[0::2], lines[1::2], strict=True):
            try:
                action = json.loads(a)
                source = json.loads(s)
            except json.JSONDecodeError:
                return _err(400, "x_content_parse_exception", "failed to parse")
            ((op, meta),) = action.items()
            pipeline = request.query.get("pipeline")
            if pipeline is not None and pipeline not in self.ingest_pipelines:
                reason = f"pipeline with id [{pipeline}] does not exist"
                base = {"_index": meta.get("_index") or default_index, "_id": meta.get("_id"), "status": 400}
                items.append({op: {**base, "error": {"type": "illegal_argument_exception", "reason": reason}}})
                continue
            if pipeline is not None:
                source = {**source, "ingested_by": pipeline}
            items.append({op: self._item(op, meta, source, default_index)})
        errors = any(v["status"] >= 300 for item in items for v in item.values())
        if fate == "after":
            self.after_fault_created += sum(1 for item in items for v in item.values() if v["status"] == 201)
            return _err(500, "internal_server_error", "node disconnected after indexing")
        return json_error(200, {"took": 1, "errors": errors, "items": items})

    def _item(self, op: str, meta: dict[str, Any], source: dict[str, Any], default: str | None) -> dict[str, Any]:
        index = meta.get("_index") or default or ""
        doc_id = meta.get("_id")
        base: dict[str, Any] = {"_index": index, "_id": doc_id}

        def fail(status: int, etype: str, reason: str) -> dict[str, Any]:
            return {**base, "status": status, "error": {"type": etype, "reason": reason, "index": index}}

        is_stream = any(fnmatch.fnmatchcase(index, p) for p in self.data_streams)
        if is_stream and op != "create":
            return fail(
                400,
                "illegal_argument_exception",
                f"only write ops with an op_type of create are allowed in data streams [{index}]",
            )
        if is_stream and "@timestamp" not in source:
            return fail(400, "document_parsing_exception", "data stream timestamp field [@timestamp] is missing")
        if self.block == "flood_stage":
            self.blocked_items += 1
            return fail(429, "cluster_block_exception", f"index [{index}] blocked by: [TOO_MANY_REQUESTS/12/disk usage "
                        "exceeded flood-stage watermark, index has read-only-allow-delete block];")  # fmt: skip
        if self.faults.rng.random() < self.item_fault_rate:
            self.item_faults += 1
            if self.faults.rng.random() < 0.5:
                return fail(429, "es_rejected_execution_exception", "rejected execution of primary operation")
            return fail(503, "unavailable_shards_exception", "primary shard is not active")
        if self.reject is not None and self.reject(source):
            return fail(400, "document_parsing_exception", "[1:20] failed to parse field [attributes.n] of type [long]")
        docs = self.docs.setdefault(index, {})
        if op == "create" and doc_id in docs:
            self.conflicts += 1
            return fail(
                409,
                "version_conflict_engine_exception",
                f"[{doc_id}]: version conflict, document already exists (current version [1])",
            )
        docs[str(doc_id)] = source
        self.created[str(doc_id)] += 1
        return {**base, "_version": 1, "result": "created", "status": 201, "_seq_no": len(docs), "_primary_term": 1}
