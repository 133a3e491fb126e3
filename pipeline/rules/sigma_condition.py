"""Sigma conditions against ours: which selections ``1 of <pattern>`` / ``all of <pattern>`` reach.

The rule language matches a pattern against every selection name (``them`` is all of them).
Sigma (sigma-rules-specification.md, "Condition") leaves ``_``-prefixed identifiers out of
``them``; pySigma, the reference implementation, leaves them out of every pattern that does not
itself start with ``_``. Sigma identifiers may also contain ``-``, which our conditions do not
accept. :func:`rewrite_of` writes a quantified pattern out as the explicit list of selections
whenever the two readings differ, so a condition means the same on both sides;
:func:`plain_identifiers` renames ``-`` identifiers for import.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from pipeline.rules.sigma_values import SigmaImportError

_OF = re.compile(r"\b(1|any|all)\s+of\s+([A-Za-z0-9_*-]+)")  # any whitespace between, as pySigma's parser
_IDENT = re.compile(r"[A-Za-z0-9_*-]+")


def of_names(pattern: str, names: Sequence[str], *, sigma: bool) -> list[str]:
    """The selections ``pattern`` reaches among ``names``, read as Sigma (``sigma``) or as our rules."""
    got = fnmatch.filter(names, "*" if pattern == "them" else pattern)
    if sigma and not pattern.startswith("_"):
        got = [n for n in got if not n.startswith("_")]
    return got


def rewrite_of(cond: str, ours: Sequence[str], sigmas: Sequence[str], *, to_sigma: bool, force: bool = False) -> str:
    """Write out each quantified pattern whose selections differ between the two readings.

    ``ours`` are the selection names in our rule, ``sigmas`` those in the Sigma rule (export adds
    selections). ``to_sigma``: our reading is kept (export); else Sigma's is (import). ``force``
    writes out every pattern (before :func:`rename_in_condition`, which could widen one).

    Raises:
        SigmaImportError: on import, a pattern reaches no identifier as Sigma reads it.
    """

    def one(m: re.Match[str]) -> str:
        quant, pattern = m.group(1), m.group(2)
        mine, theirs = of_names(pattern, ours, sigma=False), of_names(pattern, sigmas, sigma=True)
        keep = mine if to_sigma else theirs
        if not keep and not to_sigma:  # pySigma refuses it; our reading may still reach _-prefixed names
            raise SigmaImportError(f"condition: {m.group(0)!r} doesn't match any detection (Sigma leaves "
                                   "_-prefixed identifiers out of it)")  # fmt: skip
        if (mine == theirs and not force) or not keep:
            return "1 of " + pattern if quant == "any" and to_sigma else m.group(0)
        return "(" + (" and " if quant == "all" else " or ").join(keep) + ")"

    return _OF.sub(one, cond)


def plain_identifiers(names: Sequence[str]) -> Mapping[str, str]:
    """New names for Sigma identifiers our conditions cannot spell (``selection-1`` → ``selection_1``)."""
    taken = set(names)
    out: dict[str, str] = {}
    for n in names:
        if "-" in n:
            new = n.replace("-", "_")
            while new in taken:
                new += "_"
            taken.add(new)
            out[n] = new
    return out


def rename_in_condition(cond: str, renames: Mapping[str, str]) -> str:
    """``cond`` with identifiers renamed (quantified patterns must already be written out)."""
    return _IDENT.sub(lambda m: renames.get(m.group(0), m.group(0)), cond)
