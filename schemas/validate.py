"""Validate dicts against the shipped JSON Schemas (used by tests and ``config validate``).

jsonschema is a dev/test dependency; importing this module without it raises ImportError.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@functools.cache
def _validators() -> dict[str, Any]:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    docs = {
        name: json.loads((HERE / f"{name}.v1.json").read_text()) for name in ("event", "alert", "deadletter", "receipt")
    }
    registry: Registry[Any] = Registry().with_resources(
        [(f"https://instantly-audit.dev/schemas/{n}.v1.json", Resource.from_contents(d)) for n, d in docs.items()]
    )
    return {
        n: Draft202012Validator(d, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for n, d in docs.items()
    }


def schema_errors(kind: str, instance: dict[str, Any]) -> list[str]:
    """The errors of ``instance`` against ``kind`` (event, alert, deadletter or receipt); [] when valid."""
    v = _validators()[kind]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in v.iter_errors(instance)]
