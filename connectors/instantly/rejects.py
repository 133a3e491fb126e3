"""Records the poller cannot publish as events, as dead letters (stage ``source``, reason ``normalize``).

* :func:`safe_record` — what a dead letter keeps of a record: the connector's redaction, then the
  publish gate's passes (a refusal keeps nothing).
* :func:`rejected_letters` — the records a snapshot listing left out (no usable id, refused by the
  gate; :func:`connectors.instantly.snapshots.split_snapshot`): one dead letter each, once while the
  listings keep showing it. The hashes of the last listing's rejects are kept under
  :func:`rejected_key` and written in the snapshot's own transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from connectors.instantly.redact import redact_record
from pipeline.bus.base import DEADLETTER_TOPIC, Bus
from pipeline.observability.logs import redact_text
from pipeline.redaction.gate import GateRejected, redact_tree
from schemas import deadletter


def safe_record(record: Any) -> Any:
    """A record for a dead letter: connector redaction (an object), then the gate's passes (a refusal keeps nothing)."""
    try:
        return redact_tree(redact_record(record) if isinstance(record, Mapping) else record)
    except GateRejected:
        return None


def rejected_key(source_id: str, stream: str) -> str:
    """State key of the hashes of the records a stream's last listing left out: ``rejected/{source_id}/{stream}``."""
    return f"rejected/{source_id}/{stream}"


async def rejected_letters(
    bus: Bus,
    source_id: str,
    workspace_id: str,
    stream: str,
    skipped: Sequence[tuple[Mapping[str, Any], str]],
    observed_at: str,
) -> tuple[list[tuple[str, bytes, bytes]], dict[str, bytes | None]]:
    """Dead letters for the records left out of a snapshot that the last listing did not already leave
    out (a record listed again on every poll gives one letter, not one per poll), and the state write
    that remembers this listing's (``{}`` when unchanged)."""
    key = workspace_id.encode()
    state_key = rejected_key(source_id, stream)
    stored = await bus.get_state(state_key)
    try:
        before = set(orjson.loads(stored)) if stored else set()
    except orjson.JSONDecodeError:
        before = set()
    now: dict[str, tuple[Mapping[str, Any], str]] = {}
    for record, reason in skipped:
        canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=repr)
        now.setdefault(hashlib.sha256(canonical).hexdigest()[:32], (record, reason))
    letters = []
    for digest, (record, reason) in now.items():
        if digest in before:
            continue
        letter = deadletter.build(
            stage="source", component=source_id, component_type="instantly", reason="normalize",
            error=redact_text(reason), failed_at=observed_at, value=orjson.dumps(safe_record(record)),
            stream=stream, key=key,
        )  # fmt: skip
        letters.append((DEADLETTER_TOPIC, letter.to_json(), key))
    if set(now) == before:
        return letters, {}
    return letters, {state_key: orjson.dumps(sorted(now)) if now else None}
