"""Formats: Event v1 / Alert v1 → what SIEMs ingest natively.

* :mod:`~pipeline.formats.native` — the bus JSON itself (``schemas/*.v1.json``).
* :mod:`~pipeline.formats.ocsf` — OCSF 1.8.0 (Security Lake, OpenSearch, Splunk add-on).
* :mod:`~pipeline.formats.ecs` — Elastic Common Schema (Elastic Security).
* :mod:`~pipeline.formats.cef` — ArcSight CEF (ArcSight, Sentinel, QRadar) with strict escaping.
* :mod:`~pipeline.formats.syslog5424` — RFC 5424 messages and RFC 6587/5425 octet-counted frames.
* :func:`classify` — what an event is about (family, verb, outcome, label), shared by all of them.

Every formatter takes the dict form a sink receives in ``Delivery.body`` (or the Event/Alert
object) and is a pure function: no I/O, no clock reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.formats._common import Activity, classify
from pipeline.formats.cef import to_cef
from pipeline.formats.ecs import to_ecs
from pipeline.formats.native import dumps, native_json, to_native
from pipeline.formats.ocsf import OCSF_VERSION, to_ocsf

FormatName = Literal["native", "ocsf", "ecs", "cef"]
FORMATS: tuple[FormatName, ...] = ("native", "ocsf", "ecs", "cef")

__all__ = [
    "FORMATS",
    "OCSF_VERSION",
    "Activity",
    "FormatName",
    "classify",
    "dumps",
    "native_json",
    "render",
    "render_bytes",
    "to_cef",
    "to_ecs",
    "to_native",
    "to_ocsf",
]


def render(record: Any, fmt: FormatName) -> dict[str, Any] | str:
    """Render an Event/Alert in ``fmt``: a JSON-ready dict, or a CEF line for ``cef``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
        TypeError: ``record`` is not an Event/Alert or its dict form.
    """
    if fmt == "native":
        return to_native(record)
    if fmt == "ocsf":
        return to_ocsf(record)
    if fmt == "ecs":
        return to_ecs(record)
    if fmt == "cef":
        return to_cef(record)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def render_bytes(record: Any, fmt: FormatName) -> bytes:
    """Render to UTF-8 bytes: compact JSON for the JSON formats, the CEF line for ``cef``.

    Raises:
        ValueError: ``fmt`` is unknown.
        TypeError: ``record`` is not an Event/Alert or its dict form.
    """
    out = render(record, fmt)
    return out.encode("utf-8") if isinstance(out, str) else dumps(out)
