"""Receipt v1: the completeness ledger of one source stream for one workspace and one UTC hour.

A polling source publishes a receipt to ``instantly.receipts.v1`` (key ``<workspace id>/<hour>``)
in the same bus transaction as the records that changed it, so receipts are exactly as durable as
the events. The ledger counts what the source listed with a timestamp in the hour (``seen``),
what it published, dead-lettered, or listed too late to publish (``late``), with an
order-independent hash of the ids seen (XOR of a 64-bit hash of each id, 16 hex digits).

An hour is *closed* once the source's cursor has moved past it by its overlap window
(``first_closed_at``, ``revision`` 1); a later change of a closed hour's ledger publishes
``revision`` + 1. ``interrupted`` marks an hour the source did not poll live (it resumed after a
gap longer than its bound). See ``receipt.v1.json`` and ``docs/completeness.md``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import orjson

from schemas.errors import RecordError, decode_error
from schemas.event import WorkspaceRef

SCHEMA: Literal["instantly.receipt.v1"] = "instantly.receipt.v1"
HOUR_SECS = 3600
CHANGED_AFTER_CLOSE = "changed_after_close"
INTERRUPTED = "interrupted"


class ReceiptSource(msgspec.Struct, frozen=True, gc=False):
    """Which source wrote the receipt: its type, its config id and the stream the ledger counts."""

    type: str
    id: str
    stream: str


class Receipt(msgspec.Struct, frozen=True, gc=False):
    """One hour's ledger (see the module docstring)."""

    workspace: WorkspaceRef
    source: ReceiptSource
    hour: str
    seen: int
    published: int
    dead_lettered: int
    late: int
    id_hash: str
    closed: bool
    first_closed_at: str | None
    revision: int
    interrupted: bool
    updated_at: str
    schema: Literal["instantly.receipt.v1"] = SCHEMA

    @property
    def key(self) -> bytes:
        """The bus record key: ``<workspace id>/<hour>``."""
        return f"{self.workspace.id}/{self.hour}".encode()

    @property
    def hour_start(self) -> float:
        """The hour's first second (epoch seconds).

        Raises:
            RecordError: ``hour`` is not in the contract's form.
        """
        return parse_hour(self.hour)

    def gap_reasons(self) -> list[str]:
        """Why the hour needs a look: its ledger changed after it closed, and/or it was interrupted."""
        out = [CHANGED_AFTER_CLOSE] if self.revision > 1 else []
        return out + ([INTERRUPTED] if self.interrupted else [])

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (``schema`` first)."""
        d = msgspec.to_builtins(self)
        return {"schema": d.pop("schema"), **d}

    def to_json(self) -> bytes:
        """Serialise to the bus bytes (orjson, fields in declaration order)."""
        return orjson.dumps(self, default=msgspec.structs.asdict)

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        """Parse bytes from the receipts topic.

        Raises:
            RecordError: not JSON, or not a Receipt v1 (the message names the field).
        """
        try:
            return RECEIPT_DECODER.decode(data)
        except msgspec.DecodeError as err:
            raise decode_error("a Receipt v1", err) from None


RECEIPT_DECODER = msgspec.json.Decoder(Receipt)


def hour_label(hour_start: float) -> str:
    """``2026-12-07T01:00:00Z`` for the hour that starts at ``hour_start`` (epoch seconds)."""
    start = int(hour_start // HOUR_SECS) * HOUR_SECS
    return datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_hour(text: str) -> float:
    """Inverse of :func:`hour_label` (epoch seconds of the hour's start).

    Raises:
        RecordError: ``text`` is not an hour in that form.
    """
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise RecordError(f"{text!r} is not an hour like 2026-12-07T01:00:00Z") from None
