"""Canaries seeded into every surface the reviewer found leaking: none may come out.

Each test registers (or configures) a canary secret, drives the surface that used to echo it,
and asserts the canary is absent from everything captured.
"""

from __future__ import annotations

import json

import pytest

from pipeline.clock import FakeClock
from pipeline.observability.health import HealthRegistry
from pipeline.redaction import registry
from pipeline.redaction.registry import register_secret


@pytest.fixture(autouse=True)
def _clean_registry() -> None:
    registry.forget_secrets()


def test_readyz_reasons_lose_sink_tokens_and_the_instantly_key() -> None:
    register_secret("CANARY-hectok-BBB222")
    register_secret("MDE5YTRhNGEtMTExMS03MjIyLTgzMzMtOTQ0NDQ0NDQ0NDQ0OkNBTkFSWXRva1BhcnQ5OQ==")
    clock = FakeClock()
    h = HealthRegistry(clock)
    h.circuit("hec401", "open", reason="splunk_hec hec401: HTTP 401 (upstream error for [Splunk CANARY-hectok-BBB222])")
    h.watch_stream("enc", "audit_logs", stale_after_secs=1)
    h.stream_error(
        "enc",
        "audit_logs",
        "ScopeError: HTTP 403 (key MDE5YTRhNGEtMTExMS03MjIyLTgzMzMtOTQ0NDQ0NDQ0NDQ0OkNBTkFSWXRva1BhcnQ5OQ%3D%3D)",
    )
    h.bus_error(RuntimeError("auth failed: token=CANARY-bus-tok-1"))
    h.set_check("webhook", False, "bind failed for Bearer CANARY-custom-99")
    clock.advance(5)
    body = json.dumps(h.report().to_dict())
    assert "CANARY" not in body
    assert "circuit open" in body and "ScopeError" in body
