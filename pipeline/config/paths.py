"""Relative paths in the config file are relative to the file, everywhere.

:func:`anchor_paths` walks a validated model and rewrites every relative ``Path`` field (and the
string fields a model lists in ``path_fields``, such as the JSONL sink's ``path``, where ``-``
means standard output) against the config file's directory, so ``run`` started from another
directory uses the same bus and files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
STDIO = "-"


def _anchor(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else base / value
    if isinstance(value, BaseModel):
        return anchor_paths(value, base)
    if isinstance(value, dict):
        return {k: _anchor(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_anchor(v, base) for v in value]
    return value


def anchor_paths(model: M, base: Path | None) -> M:
    """``model`` with every relative path made relative to ``base`` (unchanged when ``base`` is None)."""
    if base is None:
        return model
    update: dict[str, Any] = {}
    string_paths: tuple[str, ...] = getattr(type(model), "path_fields", ())
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in string_paths and isinstance(value, str) and value != STDIO and not Path(value).is_absolute():
            update[name] = str(base / value)
            continue
        anchored = _anchor(value, base)
        if anchored is not value and anchored != value:
            update[name] = anchored
    return model.model_copy(update=update) if update else model
