"""Rule lifecycle fields shared by YAML rules (match and correlation) and helpers for durations.

Every YAML rule may carry, as in Sigma::

    status: stable                 # experimental | test | stable | deprecated (default: experimental)
    author: Security team
    references: [https://developer.instantly.ai/]
    falsepositives: [An admin rotating keys by hand]
    related: [{id: auth.mfa_disabled, type: derived}]   # derived | obsolete | merged | renamed | similar
    tests: [...]                   # in-file test cases (see pipeline.rules.testing)

Python rules carry the same in :class:`~pipeline.rules.base.RuleMeta`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from pipeline.config.base import Model

RuleStatus = Literal["experimental", "test", "stable", "deprecated"]
RelationType = Literal["derived", "obsolete", "merged", "renamed", "similar"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


class Related(Model):
    """A rule this one is related to (Sigma's ``related``)."""

    id: str = Field(min_length=1)
    type: RelationType = "similar"


class LifecycleSpec(Model):
    """The lifecycle keys every YAML rule accepts (see the module docstring)."""

    status: RuleStatus = "experimental"
    author: str = ""
    references: list[str] = Field(default_factory=list)
    falsepositives: list[str] = Field(default_factory=list)
    related: list[Related] = Field(default_factory=list)
    tests: list[dict[str, Any]] = Field(default_factory=list)


def parse_duration(value: Any, where: str) -> float:
    """``90``, ``"90s"``, ``"10m"``, ``"1h"``, ``"30d"`` → seconds.

    Raises:
        ValueError: not a non-negative duration (the message starts with ``where``).
    """
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{where}: {value!r} is not a duration (seconds, or a number with s, m, h or d)")
    return float(m.group(1)) * _UNIT[m.group(2)]
