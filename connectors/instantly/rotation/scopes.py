"""``--scopes``: a rotated key may get fewer scopes than the old one, never more."""

from __future__ import annotations

from collections.abc import Sequence

from connectors.instantly.api import covers, is_scope
from pipeline.errors import ConfigError


def check_scopes(requested: Sequence[str], old: Sequence[str]) -> list[str]:
    """Validate ``--scopes``: well-formed and only narrowing the old key's scopes.

    Raises:
        ConfigError: a scope is malformed or widens the key.
    """
    bad = [s for s in requested if not is_scope(s)]
    if bad:
        raise ConfigError(f"--scopes: not a scope: {', '.join(bad)} (form <resource>:<all|create|read|update|delete>)")
    wider = [s for s in requested if not covers(old, s)]
    if wider:
        raise ConfigError(f"--scopes may only narrow the key; the old key does not grant {', '.join(wider)}")
    if not requested:
        raise ConfigError("--scopes: give at least one scope")
    return sorted(set(requested))
