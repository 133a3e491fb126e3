"""The native format: Event v1 / Alert v1 exactly as on the bus (``schemas/*.v1.json``).

Serialised with orjson (UTF-8, no insignificant whitespace); an Event/Alert object gives
exactly the bytes it has on the bus (sinks holding a ``Delivery`` can send ``raw``). Control
characters and every non-ASCII-safe character are escaped by JSON itself, so a native
record never contains a raw newline and can travel line-framed or in a syslog MSG.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.formats._common import as_dict


def to_native(record: Any) -> dict[str, Any]:
    """The dict form of an Event/Alert (a shallow copy when given a dict).

    Raises:
        TypeError: ``record`` is neither an Event/Alert nor a mapping.
    """
    return as_dict(record)


def dumps(document: Any) -> bytes:
    """Serialise any JSON-ready document (native, OCSF or ECS) to compact UTF-8 JSON.

    Raises:
        TypeError: the document holds a value JSON cannot represent.
    """
    try:
        return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as err:
        raise TypeError(f"document is not JSON-serialisable: {err}") from None


def native_json(record: Any) -> bytes:
    """An Event/Alert as compact JSON: the object's own ``to_json()`` bytes, or a dict serialised.

    Raises:
        TypeError: ``record`` is not an Event/Alert/mapping, or is not JSON-serialisable.
    """
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        data = to_json()
        if isinstance(data, bytes):
            return data
    return dumps(to_native(record))
