"""Typed registries: how the runtime finds connectors without importing them.

Connectors register through entry points (``pyproject.toml``), one group per kind:

=================================  ===========================================================
group                              an entry is …
=================================  ===========================================================
``instantly_audit.sections``       a config model for one top-level key of the config file
``instantly_audit.sources``        a :class:`pipeline.sources.base.SourcePlugin`
``instantly_audit.sinks``          a :class:`pipeline.delivery.base.Sink` class
``instantly_audit.rule_packs``     a :class:`pipeline.rules.base.RulePack`
``instantly_audit.commands``       a :class:`pipeline.cli.base.CommandPlugin`
``instantly_audit.webhook_kinds``  a :class:`pipeline.sources.webhook.kind.WebhookKind`
=================================  ===========================================================

The runtime never names a connector module, by import or by string: it asks this module.
Each stage wraps :func:`load_group` with its Protocol check (``sink_class``, ``rule_packs``, …).
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any

from pipeline.errors import ConfigError

SECTIONS = "instantly_audit.sections"
SOURCES = "instantly_audit.sources"
SINKS = "instantly_audit.sinks"
RULE_PACKS = "instantly_audit.rule_packs"
COMMANDS = "instantly_audit.commands"
WEBHOOK_KINDS = "instantly_audit.webhook_kinds"


@functools.cache
def load_group(group: str) -> dict[str, Any]:
    """Every entry of ``group``, loaded, by name (cached: entry points do not change at run time).

    Raises:
        ConfigError: an installed entry point cannot be imported (a broken installation).
    """
    out: dict[str, Any] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            out[ep.name] = ep.load()
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"plugin {ep.name!r} of {group} cannot be loaded ({err})") from None
    return out


def load_one(group: str, name: str, what: str) -> Any:
    """The entry ``name`` of ``group``.

    Raises:
        ConfigError: no such entry is installed; the message lists the known ones.
    """
    found = load_group(group)
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"unknown {what} {name!r} (known: {known})")
    return found[name]


def config_sections() -> dict[str, Any]:
    """Top-level config keys owned by installed connectors → the model that validates each."""
    return load_group(SECTIONS)
