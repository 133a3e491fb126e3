"""Shared helpers for the webhook receiver tests (plus checks of the helpers themselves)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from pipeline.bus.base import EVENTS_TOPIC, Bus, Record, iter_records
from pipeline.config.base import EnvValue
from pipeline.errors import BusError
from pipeline.sources.webhook.config import WebhookConfig, parse_webhook_config
from pipeline.sources.webhook.receiver import WebhookReceiver

SECRET_A = "iaw_canary_A_7f3c9d2e4b1a6058c3d7e9f1a2b4c6d8"
SECRET_B = "iaw_canary_B_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WS = "019cc043-e2f1-7def-8b07-0aab88328dad"
JSON = {"Content-Type": "application/json"}


def make_config(
    secrets: Sequence[str] = (SECRET_A,),
    *,
    source: str = "crm",
    workspace: str = WS,
    source_extra: dict[str, Any] | None = None,
    **extra: Any,
) -> WebhookConfig:
    """A validated config with one source whose secrets come "from the environment"."""
    block: dict[str, Any] = {
        "port": 0,
        "sources": {
            source: {"workspace_id": workspace, "secrets": [EnvValue(s) for s in secrets], **(source_extra or {})}
        },
        **extra,
    }
    return parse_webhook_config(block)


def delivery(n: int = 0, *, workspace: str = WS, event_type: str = "email_sent", **fields: Any) -> bytes:
    """A delivery body as Instantly sends it; ``n`` makes it unique."""
    doc: dict[str, Any] = {
        "timestamp": "2026-03-05T23:09:47.337Z",
        "event_type": event_type,
        "workspace": workspace,
        "campaign_id": "019cc043-0000-7000-8000-000000000001",
        "campaign_name": "Q1 outreach",
        "lead_email": f"lead{n}@example.com",
        "email_account": "sender@acme.example",
        "step": 1,
        "variant": 1,
        "is_first": True,
        "email_id": f"019cc043-0000-7000-8000-{n:012d}",
        "email_subject": "Quick question",
        "email_text": "Hi there, plain text body",
        "email_html": "<p>Hi there</p>",
        "seq": n,
    }
    doc.update(fields)
    return orjson.dumps(doc)


def hdrs(secret: str | None = SECRET_A, header: str = "X-Webhook-Secret") -> dict[str, str]:
    """JSON content type plus the secret header."""
    return {**JSON, header: secret} if secret is not None else dict(JSON)


async def letters_of(bus: Bus) -> list[dict[str, Any]]:
    """The dead letters on the bus (authenticated bodies that were no valid delivery)."""
    from pipeline.bus.base import DEADLETTER_TOPIC

    out: list[dict[str, Any]] = []
    async with bus.consumer([DEADLETTER_TOPIC], start="earliest") as consumer:
        async for batch in iter_records(consumer):
            out.extend(orjson.loads(r.value) for r in batch)
    return out


async def events_of(bus: Bus, workspace: str = WS) -> list[Record]:
    """Every event record on the bus keyed by ``workspace``."""
    out: list[Record] = []
    async with bus.consumer([EVENTS_TOPIC], start="earliest") as consumer:
        async for recs in iter_records(consumer):
            out.extend(r for r in recs if r.key == workspace.encode())
    return out


@asynccontextmanager
async def serve(receiver: WebhookReceiver) -> AsyncIterator[TestClient[Any, Any]]:
    """An aiohttp test client bound to the receiver's app on 127.0.0.1."""
    async with TestClient(TestServer(receiver.make_app(), host="127.0.0.1")) as client:
        yield client


def unique_names() -> tuple[str, str]:
    """A unique (source name, workspace id) pair, so Kafka tests sharing a broker do not mix."""
    u = uuid.uuid4().hex[:10]
    return f"crm_{u}", f"ws-{u}"


class FlakyBus:
    """Delegates to a real bus; transactions raise :class:`BusError` while ``down`` is set."""

    def __init__(self, inner: Bus):
        self.inner = inner
        self.down = False
        self.delay = 0.0
        self.name = inner.name

    async def fence(self, txn_id: str) -> None:
        await self.inner.fence(txn_id)

    async def state_items(self, prefix: str = "") -> dict[str, bytes]:
        return await self.inner.state_items(prefix)

    async def get_state(self, key: str) -> bytes | None:
        return await self.inner.get_state(key)

    def transaction(self, txn_id: str) -> AbstractAsyncContextManager[Any]:
        return self._txn(txn_id)

    @asynccontextmanager
    async def _txn(self, txn_id: str) -> AsyncIterator[Any]:
        import asyncio

        if self.down:
            raise BusError("injected: the bus is down", retriable=True)
        async with self.inner.transaction(txn_id) as tx:
            yield tx
            if self.delay:
                await asyncio.sleep(self.delay)


async def close_quietly(receiver: WebhookReceiver) -> None:
    """Stop a receiver, ignoring errors (test cleanup)."""
    with contextlib.suppress(Exception):
        await receiver.stop()


def test_make_config_defaults() -> None:
    """The helper config has one source on /hooks/crm with the default header."""
    cfg = make_config()
    assert cfg.source_path("crm") == "/hooks/crm"
    assert cfg.sources["crm"].header_name == "X-Webhook-Secret"
    assert cfg.max_body_bytes == 16 << 20


def test_delivery_bodies_are_unique() -> None:
    """Different sequence numbers give different bodies (so they are not duplicates)."""
    assert delivery(1) != delivery(2) and orjson.loads(delivery(3))["seq"] == 3
