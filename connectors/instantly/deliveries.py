"""The ``webhook_deliveries`` stream: deliveries Instantly gave up on, recovered from its delivery log.

The webhook receiver loses nothing it acknowledged, but a delivery Instantly stopped retrying
while the receiver was down never reaches it. Instantly logs every attempt
(``GET /api/v2/webhook-events``, scope ``webhook_events:read``), with the payload it sent. This
stream lists the *failed* attempts (``success=false``) of a look-back window (``from`` = the day
before the last complete read; the first read ``webhook_deliveries_lookback_days`` back), groups
them by delivery (:mod:`connectors.instantly.delivery_log`) and, for each delivery to one of the
receiver's ``public_urls`` (``webhook.sources.<name>.public_urls``) that Instantly gave up on:

* skips it when the receiver published it after all (its body hash is in the receiver's duplicate
  window in bus state: Instantly may log a failure for a delivery the receiver committed late);
* else publishes the payload exactly as the receiver would have: the receiver's body hash of the
  canonical JSON (:func:`~pipeline.sources.webhook.dedup.body_digest`), the source's webhook kind
  and field policy, hence the **same event id** — plus ``attributes.recovered`` (from the delivery
  log: the delivery id, ``retry_count``, ``retry_group_id``, the attempts seen, the last status);
  a payload the receiver would have refused becomes the receiver's dead letter.

Deliveries to other URLs (the customer's own endpoints) are only counted, by host (scheme, host and
port after URL redaction: a path or query may be a credential). When anything was newly lost, one
``pipeline.webhook_deliveries_failed`` event summarises the read (rule
``pipeline.webhook_deliveries_lost`` alerts, low, only for the receiver's own losses).

Events, the summary, the handled keys and the read time commit in one bus transaction, so a crash
or a restart never publishes a recovered delivery twice, and a failed listing publishes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from connectors.instantly.api import WEBHOOK_DELIVERIES
from connectors.instantly.client import InstantlyClient
from connectors.instantly.delivery_log import (
    Attempts,
    DeliveryCursor,
    OtherDeliveries,
    day_of,
    group_key,
    record_time,
)
from connectors.instantly.normalize import pipeline_event
from connectors.instantly.streams import Publisher
from pipeline.bus.base import DEADLETTER_TOPIC, Header
from pipeline.clock import format_time
from pipeline.errors import WebhookRejected
from pipeline.observability.logs import get_logger
from pipeline.sources.webhook.config import WebhookConfig
from pipeline.sources.webhook.dedup import SeenWindow, body_digest
from pipeline.sources.webhook.kind import WebhookKind, webhook_kind
from pipeline.sources.webhook.receiver import delivery_letter
from schemas.event import Event, WorkspaceRef

log = get_logger("instantly.deliveries")

STREAM = WEBHOOK_DELIVERIES.name
SUMMARY = "pipeline.webhook_deliveries_failed"
RECOVERED_FROM = "instantly_delivery_log"
MAX_HOSTS = 50
"""Hosts named in a summary at most (the rest are counted under ``other_hosts_omitted``)."""

Out = tuple[str, bytes, bytes | None, tuple[Header, ...]]


# --------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class ReceiverSource:
    """One receiver source as its deliveries are normalized (what :class:`WebhookReceiver` builds)."""

    name: str
    workspace: WorkspaceRef
    kind: WebhookKind
    policy: Any
    window: SeenWindow
    """Only for its state key prefix (every writer's ``webhook/seen/<source>/...`` keys); never written here."""


@dataclass(frozen=True)
class ReceiverTargets:
    """The pipeline's own webhook receiver: its sources with ``public_urls``."""

    config: WebhookConfig
    sources: Mapping[str, ReceiverSource]

    def source_for(self, url: Any) -> ReceiverSource | None:
        """The source ``url`` (a delivery's ``webhook_url``) is one of, else ``None``."""
        name = self.config.source_for_url(url) if isinstance(url, str) else None
        return self.sources.get(name) if name is not None else None


def receiver_targets(cfg: WebhookConfig | None) -> ReceiverTargets | None:
    """The receiver's sources that name their ``public_urls`` (``None``: none does, the stream is off).

    Raises:
        ConfigError: a source's webhook kind is not installed.
    """
    if cfg is None:
        return None
    sources: dict[str, ReceiverSource] = {}
    for name, src in cfg.sources.items():
        if src.public_urls:
            kind = webhook_kind(src.kind)
            window = SeenWindow(name, cfg.dedup.window_hours * 3600.0, cfg.dedup.max_entries)
            ws = WorkspaceRef(src.workspace_id, src.workspace_name)
            sources[name] = ReceiverSource(name, ws, kind, kind.policy(src.options), window)
    return ReceiverTargets(cfg, sources) if sources else None


# ------------------------------------------------------------------------------------------ read
@dataclass
class _Listing:
    ours: dict[tuple[str, str], Attempts]
    other: OtherDeliveries
    listed: int = 0
    outside: int = 0


async def _list_failed(client: InstantlyClient, targets: ReceiverTargets, start: float) -> _Listing:
    """Every failed attempt since ``start``, grouped: ours by (source, group), the others by group."""
    out = _Listing({}, OtherDeliveries())
    params = {"success": False, "from": day_of(start)}
    pages = client.paginate(WEBHOOK_DELIVERIES.path, params, limit=WEBHOOK_DELIVERIES.page_size or 100)
    async with aclosing(pages):
        async for page in pages:
            for record in page:
                out.listed += 1
                ts, key = record_time(record), group_key(record)
                if ts is None or key is None or ts < start:
                    out.outside += 1  # outside the window (a server ignoring `from`), or no id/time
                    continue
                url = record.get("webhook_url")
                src = targets.source_for(url)
                if src is None:
                    out.other.add(key, url, record, ts)
                else:
                    out.ours.setdefault((src.name, key), Attempts()).add(record, ts)
    return out


# --------------------------------------------------------------------------------------- publish
@dataclass
class _Result:
    records: list[Out]
    recovered: Counter[str]
    already_received: int = 0
    dead_lettered: int = 0
    keys: list[str] = field(default_factory=list)
    """The state keys this read handled or counted (the summary's natural key)."""
    windows: dict[str, dict[bytes, int]] = field(default_factory=dict)
    """Per source, the receivers' duplicate window (every writer's keys), loaded once per read."""


async def publish_deliveries(
    pub: Publisher,
    client: InstantlyClient,
    targets: ReceiverTargets,
    *,
    now: float,
    lookback_days: float,
) -> tuple[int, int]:
    """Read the delivery log and publish what was lost (see the module docstring).

    Returns (events recovered, pipeline events published).

    Raises:
        SourceError: the listing failed (nothing was published).
        BusError: the transaction failed (nothing was published).
    """
    prefix = f"cursor/{pub.source_id}/{STREAM}/"
    cursor = DeliveryCursor.load(prefix, await pub.bus.state_items(prefix))
    start = cursor.window_start(now, lookback_days)
    listing = await _list_failed(client, targets, start)
    observed = format_time(now)
    trace = tuple(pub.telemetry.trace_headers())
    result = _Result([], Counter())
    pending = 0
    for (name, key), attempts in sorted(listing.ours.items()):
        if attempts.pending:
            pending += 1
        if attempts.lost and attempts.gave_up is not None:
            await _recover(pub, targets.sources[name], key, attempts, cursor, result, observed, trace)
    other_hosts: Counter[str] = Counter()
    for key, (host, attempts) in sorted(listing.other.groups.items()):
        if attempts.lost and key not in cursor.counted:
            other_hosts[host] += 1
            cursor.count(key, attempts.gave_up_at)
            result.keys.append(key)
    lost = sum(result.recovered.values()) + result.already_received + result.dead_lettered
    summary: Event | None = None
    if lost or other_hosts:
        summary = _summary(pub, result, lost, pending, other_hosts, start, observed)
        result.records.append(pub.record(summary, trace))
    writes = cursor.writes(read_at=now, window_start=start)
    if result.records or writes:
        async with pub.bus.transaction(pub.txn_id) as tx:
            for topic, value, key_bytes, headers in result.records:
                tx.send(topic, value, key=key_bytes, headers=headers)
            for k, v in writes.items():
                tx.put_state(k, v)
    recovered = sum(result.recovered.values())
    dead = sum(1 for r in result.records if r[0] == DEADLETTER_TOPIC)
    pub.count(STREAM, listing.listed, recovered, {"dead_letter": dead, "outside_window": listing.outside})
    if lost:
        log.warning(
            "Instantly gave up on deliveries to the webhook receiver; recovered them from its delivery log.",
            extra={"source": pub.source_id, "workspace": pub.workspace.id, "recovered": recovered,
                   "already_received": result.already_received, "dead_lettered": result.dead_lettered,
                   "by_source": dict(result.recovered)},
        )  # fmt: skip
    return recovered, 1 if summary is not None else 0


async def _recover(
    pub: Publisher,
    src: ReceiverSource,
    key: str,
    attempts: Attempts,
    cursor: DeliveryCursor,
    result: _Result,
    observed: str,
    trace: Sequence[Header],
) -> None:
    """Publish one lost delivery of ``src`` as the receiver would have (unless it is handled already)."""
    record = attempts.gave_up or {}
    payload = record.get("payload")
    try:
        body = orjson.dumps(payload) if isinstance(payload, dict) else b""
    except (orjson.JSONEncodeError, RecursionError):  # nested deeper than the encoder allows: no body to hash
        body = b""
    digest = body_digest(body)
    handled = f"{src.name}:{digest[:32]}" if body else f"{src.name}:delivery:{key}"
    if handled in cursor.handled:
        return
    cursor.handle(handled, attempts.gave_up_at)
    result.keys.append(handled)
    if body and await _received(pub, src, digest, result.windows):
        result.already_received += 1
        return
    spub = Publisher(pub.bus, pub.txn_id, pub.source_id, src.workspace, pub.telemetry, pub.metric_workspace_id)
    try:
        if not body:
            raise WebhookRejected(400, "bad_shape", "the delivery log holds no payload object")
        event = src.kind.normalize(
            body, source_name=src.name, workspace=src.workspace, digest=digest, observed_at=observed, policy=src.policy
        )
    except (RecursionError, orjson.JSONDecodeError, orjson.JSONEncodeError):
        letter = delivery_letter(src.name, src.kind, src.workspace, body, _TOO_DEEP, observed)
        result.records.append(_letter_record(letter, src, _TOO_DEEP.reason))
        result.dead_lettered += 1
        return
    except WebhookRejected as rej:
        letter = delivery_letter(src.name, src.kind, src.workspace, body, rej, observed)
        result.records.append(_letter_record(letter, src, rej.reason))
        result.dead_lettered += 1
        return
    provenance = {
        "from": RECOVERED_FROM,
        "delivery_id": record.get("id"),
        "retry_group_id": record.get("retry_group_id"),
        "retry_count": record.get("retry_count"),
        "attempts_seen": attempts.count,
        "last_status_code": record.get("status_code"),
        "last_attempt_at": format_time(attempts.gave_up_at),
    }
    event = msgspec.structs.replace(event, attributes={**event.attributes, "recovered": provenance})
    out = spub.record(event, trace)
    result.records.append(out)
    if out[0] == DEADLETTER_TOPIC:
        result.dead_lettered += 1
    else:
        result.recovered[src.name] += 1


_TOO_DEEP = WebhookRejected(400, "too_deep", "the body is nested too deeply")


def _letter_record(letter: Any, src: ReceiverSource, reason: str) -> Out:
    return (
        DEADLETTER_TOPIC,
        letter.to_json(),
        src.workspace.id.encode(),
        (("stage", b"source"), ("reason", reason.encode())),
    )


async def _received(pub: Publisher, src: ReceiverSource, digest: str, windows: dict[str, dict[bytes, int]]) -> bool:
    """Whether a receiver published this body (its hash is in the source's duplicate window).

    Each receiver replica writes its own keys (``webhook/seen/<source>/<writer>/<slot>``, before
    writer-scoped keys ``webhook/seen/<source>/<slot>``): the window is every writer's entries, read
    once per delivery-log read.
    """
    seen = windows.get(src.name)
    if seen is None:
        seen = windows[src.name] = {}
        for value in (await pub.bus.state_items(src.window.prefix)).values():
            seen.update(SeenWindow.decode(value))
    return bytes.fromhex(digest)[:16] in seen


def _summary(
    pub: Publisher,
    result: _Result,
    lost: int,
    pending: int,
    other_hosts: Counter[str],
    start: float,
    observed: str,
) -> Event:
    """The read's ``pipeline.webhook_deliveries_failed`` (id: the records it reports, so a retry of
    the same transaction gets the same id)."""
    named = dict(other_hosts.most_common(MAX_HOSTS))
    attributes: dict[str, Any] = {
        "stream": STREAM,
        "lost": lost,
        "recovered": sum(result.recovered.values()),
        "already_received": result.already_received,
        "dead_lettered": result.dead_lettered,
        "by_source": dict(sorted(result.recovered.items())),
        "pending_retry": pending,
        "other_failed": sum(other_hosts.values()),
        "other_hosts": named,
        "other_hosts_omitted": max(0, len(other_hosts) - len(named)),
        "since": day_of(start),
    }
    natural = (SUMMARY, sorted(result.keys))
    return pipeline_event(
        type=SUMMARY, workspace=pub.workspace, observed_at=observed, stream=STREAM, natural_key=natural,
        attributes=attributes,
    )  # fmt: skip
