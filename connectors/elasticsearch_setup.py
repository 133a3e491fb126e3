"""Index templates and lifecycle policies for the Elasticsearch/OpenSearch sink, and their installer.

What ``instantly-audit sinks setup NAME`` installs (idempotently) and the sink checks at start:

* a component template ``instantly-audit@mappings`` with an explicit mapping for every field
  the ECS formatter emits (``dynamic: false``: anything else is kept in ``_source`` but not
  indexed) and the vendor leftovers ``instantly.details`` as ``flattened`` (Elasticsearch) or
  ``flat_object`` (OpenSearch), so one index takes every stream's shapes; leftovers too long to
  be one Lucene term, ``instantly.unindexed``, as an object with ``enabled: false`` (``_source`` only);
* composable index templates ``logs-instantly.audit`` (``logs-instantly.audit-*``) and
  ``logs-instantly.alerts`` (``logs-instantly.alerts-*``), both data streams, priority 200
  (above the built-in ``logs`` template);
* a lifecycle policy per template: ILM on Elasticsearch (rollover at 50 GB or 30 days,
  delete after 365 days for events, 730 for alerts), ISM on OpenSearch (the same, attached
  to the data streams' backing indices by ``ism_template``); skipped with a note when the
  cluster has no ISM plugin.

The JSON shipped in ``deploy/elasticsearch/`` is generated from this module
(``python -m connectors.elasticsearch_setup deploy/elasticsearch``) and a test keeps them equal.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from pipeline.delivery.http import HttpResponse
from pipeline.errors import SinkError

Flavor = Literal["elasticsearch", "opensearch"]
COMPONENT = "instantly-audit@mappings"
TEMPLATES = {
    "logs-instantly.audit": ("logs-instantly.audit-*", 365),
    "logs-instantly.alerts": ("logs-instantly.alerts-*", 730),
}
_K = {"type": "keyword", "ignore_above": 1024}
_DATE = {"type": "date"}

# Every field path the ECS formatter emits (outside instantly.details), with its ECS type
# (generated/ecs/ecs_flat.yml: rule.description is a keyword, message match_only_text).
ECS_FIELDS: dict[str, dict[str, Any]] = {
    "@timestamp": _DATE,
    "message": {"type": "text"},
    "ecs.version": _K,
    "event.kind": _K, "event.category": _K, "event.type": _K, "event.action": _K, "event.id": _K,
    "event.outcome": _K, "event.module": _K, "event.provider": _K, "event.dataset": _K, "event.code": _K,
    "event.reference": _K, "event.created": _DATE, "event.start": _DATE, "event.end": _DATE,
    "event.severity": {"type": "long"}, "event.risk_score": {"type": "float"},
    "event.original": {"type": "keyword", "index": False, "doc_values": False},
    "organization.id": _K, "organization.name": _K,
    "labels.schema": _K, "labels.event_type": _K, "labels.source_kind": _K, "labels.source_stream": _K,
    "labels.source_record_id": _K, "labels.severity": _K, "labels.status": _K,
    "user.id": _K, "user.name": _K, "user.email": _K,
    "user.target.id": _K, "user.target.name": _K, "user.target.email": _K,
    "user.target.roles": _K, "user.changes.roles": _K,
    "source.ip": {"type": "ip"}, "related.ip": {"type": "ip"}, "related.user": _K,
    "user_agent.original": _K,
    "rule.id": _K, "rule.name": _K, "rule.version": _K, "rule.description": _K,
    "rule.reference": _K, "rule.ruleset": _K,
    "threat.framework": _K, "threat.technique.id": _K, "threat.technique.subtechnique.id": _K,
    "instantly.api_key.id": _K, "instantly.api_key.name": _K, "instantly.api_key.scopes": _K,
    "instantly.api_key.fingerprint": _K,
    "data_stream.type": _K, "data_stream.dataset": _K, "data_stream.namespace": _K,
}  # fmt: skip
OPAQUE = "instantly.details"
UNINDEXED = "instantly.unindexed"
MULTI_TEXT = ("organization.name", "user.name", "user.target.name", "user_agent.original")
"""Fields ecs_flat.yml gives a ``text`` multi-field (``user.name.text``: full-text search on a keyword)."""


def _nest(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for path, spec in fields.items():
        *parents, leaf = path.split(".")
        node = props
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = dict(spec)
    return props


def component_template(flavor: Flavor) -> dict[str, Any]:
    """The shared mappings (component template body) for ``flavor``."""
    fields = dict(ECS_FIELDS)
    fields[OPAQUE] = {"type": "flattened"} if flavor == "elasticsearch" else {"type": "flat_object"}
    fields[UNINDEXED] = {"type": "object", "enabled": False}  # leftovers too long for one term: _source only
    text = "match_only_text" if flavor == "elasticsearch" else "text"  # OpenSearch lacks match_only_text
    for path in MULTI_TEXT:
        fields[path] = {**fields[path], "fields": {"text": {"type": text}}}
    if flavor == "elasticsearch":  # ECS maps message as match_only_text, which OpenSearch lacks (text there)
        fields["message"] = {"type": "match_only_text"}
        for name in ("type", "dataset", "namespace"):
            fields[f"data_stream.{name}"] = {"type": "constant_keyword"}
    return {"template": {"mappings": {"dynamic": False, "properties": _nest(fields)}},
            "_meta": {"managed_by": "instantly-audit", "description": "ECS mappings of instantly-audit"}}  # fmt: skip


def index_template(name: str, flavor: Flavor) -> dict[str, Any]:
    """The composable index template ``name`` (a data stream) for ``flavor``."""
    pattern, _days = TEMPLATES[name]
    settings: dict[str, Any] = {"index": {"number_of_replicas": "0"}} if flavor == "opensearch" else {}
    if flavor == "elasticsearch":
        settings = {"index": {"lifecycle": {"name": name}}}
    return {
        "index_patterns": [pattern],
        "data_stream": {},
        "priority": 200,
        "composed_of": [COMPONENT],
        "template": {"settings": settings},
        "_meta": {"managed_by": "instantly-audit"},
    }


def ilm_policy(name: str) -> dict[str, Any]:
    """The Elasticsearch ILM policy for template ``name``."""
    days = TEMPLATES[name][1]
    return {"policy": {"_meta": {"managed_by": "instantly-audit"}, "phases": {
        "hot": {"actions": {"rollover": {"max_primary_shard_size": "50gb", "max_age": "30d"}}},
        "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
    }}}  # fmt: skip


def ism_policy(name: str) -> dict[str, Any]:
    """The OpenSearch ISM policy for template ``name`` (attached to its backing indices)."""
    pattern, days = TEMPLATES[name]
    return {"policy": {
        "description": f"instantly-audit: roll over {name} at 50 GB or 30 days, delete after {days} days",
        "default_state": "hot",
        "states": [
            {"name": "hot", "actions": [{"rollover": {"min_primary_shard_size": "50gb", "min_index_age": "30d"}}],
             "transitions": [{"state_name": "delete", "conditions": {"min_index_age": f"{days}d"}}]},
            {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
        ],
        "ism_template": [{"index_patterns": [f".ds-{pattern}"], "priority": 200}],
    }}  # fmt: skip


def assets(flavor: Flavor) -> dict[str, dict[str, Any]]:
    """Every request body by its API path (what setup PUTs), in install order."""
    out: dict[str, dict[str, Any]] = {f"_component_template/{COMPONENT}": component_template(flavor)}
    for name in TEMPLATES:
        if flavor == "elasticsearch":
            out[f"_ilm/policy/{name}"] = ilm_policy(name)
        else:
            out[f"_plugins/_ism/policies/{name}"] = ism_policy(name)
        out[f"_index_template/{name}"] = index_template(name, flavor)
    return out


_FILE_KIND = {"_component_template": "component-template", "policy": "ilm-policy", "policies": "ism-policy",
              "_index_template": "index-template"}  # fmt: skip


def asset_files(directory: Path) -> dict[Path, dict[str, Any]]:
    """The shipped JSON files under ``directory`` and their content (what :func:`write_assets` writes)."""
    out: dict[Path, dict[str, Any]] = {}
    for flavor in ("elasticsearch", "opensearch"):
        for path, body in assets(flavor).items():
            name = path.rsplit("/", 1)[1].replace("@", "_")
            out[directory / flavor / f"{_FILE_KIND[path.split('/')[-2]]}.{name}.json"] = body
    return out


def write_assets(directory: Path) -> list[Path]:
    """Write the shipped JSON files (one per flavor and API path) under ``directory``."""
    for target, body in asset_files(directory).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return list(asset_files(directory))


# ------------------------------------------------------------------------------ install / check
class Http(Protocol):
    """What the installer needs of :class:`~pipeline.delivery.http.HttpClient`."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        max_response_bytes: int = ...,
    ) -> HttpResponse: ...


def required_templates(index: str, alert_index: str | None) -> list[str]:
    """The shipped templates the configured indices rely on (the data streams they match)."""
    names = []
    for name, (pattern, _days) in TEMPLATES.items():
        if any(i is not None and i.startswith(pattern[:-1]) for i in (index, alert_index)):
            names.append(name)
    return names


async def flavor_of(http: Http, who: str) -> Flavor:
    """``opensearch`` or ``elasticsearch``, from ``GET /``.

    Raises:
        SinkError: the cluster does not answer like either.
    """
    resp = await http.request("GET", "/")
    info = resp.json(f"{who}: GET /") if resp.status == 200 else None
    if not isinstance(info, dict) or not isinstance(info.get("version"), dict):
        raise SinkError(f"{who}: GET / answered HTTP {resp.status}, not like Elasticsearch/OpenSearch")
    return "opensearch" if info["version"].get("distribution") == "opensearch" else "elasticsearch"


async def missing_templates(http: Http, names: list[str], who: str) -> list[str]:
    """Which of the index templates ``names`` the cluster lacks.

    Raises:
        SinkError: the cluster answers neither 200 nor 404 (e.g. missing privileges).
    """
    missing = []
    for name in names:
        resp = await http.request("GET", f"/_index_template/{name}")
        if resp.status == 404:
            missing.append(name)
        elif resp.status != 200:
            raise SinkError(f"{who}: GET /_index_template/{name} answered HTTP {resp.status}: {resp.text(200)}")
    return missing


async def install(http: Http, who: str) -> list[str]:
    """PUT every template and policy (idempotent); one line per item saying what happened.

    Raises:
        SinkError: the cluster refused one of them.
    """
    flavor = await flavor_of(http, who)
    done: list[str] = []
    for path, body in assets(flavor).items():
        if path.startswith("_plugins/_ism/"):
            done.append(await _put_ism(http, path, body, who))
            continue
        resp = await http.request("PUT", f"/{path}", data=orjson.dumps(body), headers=_JSON)
        if resp.status != 200:
            raise SinkError(f"{who}: PUT /{path} answered HTTP {resp.status}: {resp.text(300)}", retriable=False)
        done.append(f"{flavor}: {path} installed")
    return done


_JSON = {"Content-Type": "application/json"}


async def _put_ism(http: Http, path: str, body: dict[str, Any], who: str) -> str:
    """ISM policies need the sequence number to be replaced; an unchanged policy is left alone."""
    got = await http.request("GET", f"/{path}")
    if got.status in (400, 404) and b"no handler" in got.body.lower():
        return f"opensearch: {path} skipped (the ISM plugin is not installed; no lifecycle policy)"
    params: dict[str, str] | None = None
    if got.status == 200:
        current = got.json(f"{who}: GET /{path}")
        policy = current.get("policy", {}) if isinstance(current, dict) else {}
        wanted = body["policy"]
        if all(policy.get(k) == wanted[k] for k in ("description", "default_state", "states")):
            return f"opensearch: {path} unchanged"
        params = {"if_seq_no": str(current.get("_seq_no")), "if_primary_term": str(current.get("_primary_term"))}
    elif got.status != 404:
        raise SinkError(f"{who}: GET /{path} answered HTTP {got.status}: {got.text(300)}", retriable=False)
    resp = await http.request("PUT", f"/{path}", data=orjson.dumps(body), headers=_JSON, params=params)
    if resp.status not in (200, 201):
        raise SinkError(f"{who}: PUT /{path} answered HTTP {resp.status}: {resp.text(300)}", retriable=False)
    return f"opensearch: {path} installed"


if __name__ == "__main__":  # pragma: no cover
    for p in write_assets(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/elasticsearch")):
        print(p)
