"""One formats registry: format name → renderer, used by every sink's ``format:`` option.

A :class:`Format` renders an Event v1 / Alert v1 (object or dict form) either to a JSON-ready
document (``native``, ``ecs``, ``ocsf``, ``splunk``) or to one text line (``cef``).
:data:`opaque` names the subtrees whose inner shape varies by stream (vendor leftovers):
search engines index them as ``flattened``/``flat_object`` and the mapping-consistency test
does not type-check inside them. Embedding programs add formats with :func:`register_format`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.formats.cef import to_cef
from pipeline.formats.cim import to_splunk
from pipeline.formats.ecs import to_ecs
from pipeline.formats.native import dumps, to_native
from pipeline.formats.ocsf import to_ocsf


@dataclass(frozen=True, slots=True)
class Format:
    """A named record format."""

    name: str
    render: Callable[[Any], dict[str, Any] | str]
    line: bool = False  # True: a text line (CEF); False: a JSON document
    description: str = ""
    opaque: tuple[str, ...] = field(default=())  # dotted paths whose inner shape is free-form


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> None:
    """Make ``fmt`` available by its name (replaces a format of the same name)."""
    _FORMATS[fmt.name] = fmt


def format_names() -> tuple[str, ...]:
    """Every registered format name, in registration order."""
    return tuple(_FORMATS)


def json_format_names() -> tuple[str, ...]:
    """The formats that render a JSON document (not a text line)."""
    return tuple(name for name, fmt in _FORMATS.items() if not fmt.line)


def get_format(name: str) -> Format:
    """The format called ``name``.

    Raises:
        ValueError: no such format (the message lists the known ones).
    """
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (known: {', '.join(_FORMATS)})") from None


def render(record: Any, name: str) -> dict[str, Any] | str:
    """Render an Event/Alert in format ``name``: a JSON-ready dict, or a line for ``cef``.

    Raises:
        ValueError: ``name`` is not a registered format.
        TypeError: ``record`` is not an Event/Alert or its dict form.
    """
    return get_format(name).render(record)


def render_bytes(record: Any, name: str) -> bytes:
    """Render to UTF-8 bytes: compact JSON for the JSON formats, the text line for ``cef``.

    Raises:
        ValueError: ``name`` is unknown.
        TypeError: ``record`` is not an Event/Alert or its dict form, or not JSON-serialisable.
    """
    out = render(record, name)
    return out.encode("utf-8") if isinstance(out, str) else dumps(out)


for _builtin in (
    Format("native", to_native, description="Event v1 / Alert v1 as on the bus",
           opaque=("raw", "change.before", "change.after", "attributes", "entities")),
    Format("ecs", to_ecs, description="Elastic Common Schema 8.17 (Elasticsearch, OpenSearch, Elastic Security)",
           opaque=("instantly.details", "instantly.unindexed")),
    Format("ocsf", to_ocsf, description="OCSF (Security Lake, OpenSearch Security Analytics)", opaque=("unmapped",)),
    Format("splunk", to_splunk, description="CIM-friendly JSON for Splunk HEC (Authentication, Change)",
           opaque=("instantly.raw", "instantly.change", "instantly.attributes", "instantly.entities")),
    Format("cef", to_cef, line=True, description="ArcSight CEF line (syslog transports)"),
):  # fmt: skip
    register_format(_builtin)
