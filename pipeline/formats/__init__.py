"""Formats: Event v1 / Alert v1 → what SIEMs ingest natively.

* :mod:`~pipeline.formats.native` — the bus JSON itself (``schemas/*.v1.json``).
* :mod:`~pipeline.formats.ocsf` — OCSF 1.9.0 (Security Lake, OpenSearch, Splunk add-on).
* :mod:`~pipeline.formats.ocsf_observables` — the OCSF ``observables`` of a finished document.
* :mod:`~pipeline.formats.ecs` — Elastic Common Schema (Elastic Security).
* :mod:`~pipeline.formats.cim` — CIM-friendly JSON for Splunk HEC (format ``splunk``).
* :mod:`~pipeline.formats.registry` — name → format, behind every sink's ``format:`` option.
* :mod:`~pipeline.formats.cef` — ArcSight CEF (ArcSight, Sentinel, QRadar) with strict escaping.
* :mod:`~pipeline.formats.syslog5424` — RFC 5424 messages and RFC 6587/5425 octet-counted frames.
* :func:`classify` — what an event is about (family, verb, outcome, label), shared by all of them.

Every formatter takes the dict form a sink receives in ``Delivery.body`` (or the Event/Alert
object) and is a pure function: no I/O, no clock reads.
"""

from __future__ import annotations

from typing import Literal

from pipeline.formats._common import Activity, classify
from pipeline.formats.cef import to_cef
from pipeline.formats.cim import to_splunk
from pipeline.formats.ecs import to_ecs
from pipeline.formats.native import dumps, native_json, to_native
from pipeline.formats.ocsf import OCSF_VERSION, to_ocsf
from pipeline.formats.registry import (
    Format,
    format_names,
    get_format,
    json_format_names,
    register_format,
    render,
    render_bytes,
)

FormatName = Literal["native", "ocsf", "ecs", "splunk", "cef"]
FORMATS: tuple[FormatName, ...] = ("native", "ocsf", "ecs", "splunk", "cef")

__all__ = [
    "FORMATS",
    "OCSF_VERSION",
    "Activity",
    "Format",
    "FormatName",
    "classify",
    "dumps",
    "format_names",
    "get_format",
    "json_format_names",
    "native_json",
    "register_format",
    "render",
    "render_bytes",
    "to_cef",
    "to_ecs",
    "to_native",
    "to_ocsf",
    "to_splunk",
]
