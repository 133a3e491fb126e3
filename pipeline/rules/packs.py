"""The installed rule packs, found through the ``instantly_audit.rule_packs`` entry point group."""

from __future__ import annotations

from pipeline.errors import ConfigError
from pipeline.registry import RULE_PACKS, load_group
from pipeline.rules.base import RulePack


def rule_packs() -> tuple[RulePack, ...]:
    """Every registered rule pack, by name.

    Raises:
        ConfigError: an entry point is not a :class:`RulePack`.
    """
    packs = []
    for name, pack in load_group(RULE_PACKS).items():
        if not isinstance(pack, RulePack):
            raise ConfigError(f"rule pack {name!r} is a {type(pack).__name__}, not a RulePack")
        packs.append(pack)
    return tuple(packs)
