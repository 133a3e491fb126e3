"""``api_key.unaudited_reach``: a key whose scopes reach high-impact operations that leave no audit record.

Instantly writes no audit record for forwarding an email, moving mailboxes, sharing a
campaign, ordering paid mailboxes, changing the owner, scheduling the workspace's removal
or bulk-reading leads. A key that can do them could be abused without a trace, so the
scopes themselves are the signal. The table behind it is :mod:`connectors.instantly.blast`
(derived from the OpenAPI v2 spec). Keys holding ``all:all``, or scopes equivalent to it, are left to
``api_key.all_scope``.

A plain ``x:read`` scope reaching a bulk read (``leads:read`` → ``POST /leads/list``) does not
alert unless ``include_reads: true``: nearly every integration reads leads, and ``check``
reports that reach as a warning instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field

from connectors.instantly.blast import is_read_only, unaudited_reach
from connectors.instantly.checklist import Basic
from connectors.instantly.rules.api_keys import KeyAllowParams, _ScopeRule, unrestricted
from pipeline.rules.base import DAY, Finding, RuleContext, RuleMeta
from schemas.event import Event


class ReachParams(KeyAllowParams):
    """Options of ``api_key.unaudited_reach``."""

    include_reads: bool = Field(False, description="also alert when only x:read scopes reach an unaudited bulk read")


class UnauditedReachRule(_ScopeRule):
    """Open while a key (created, on the baseline, or re-scoped) reaches unaudited high-impact operations."""

    Params = ReachParams

    meta = RuleMeta(
        id="api_key.unaudited_reach", title="API key can call operations that leave no audit record",
        severity="medium", attack=("T1098.001", "T1114.003"), basic=Basic.SCOPED_KEYS, version=2,
        event_types=("api_key.created", "api_key.baseline", "api_key.scopes_changed", "api_key.deleted"),
        suppress_secs=DAY,
        runbook=(
            "The key's scopes allow operations Instantly does not audit (the alert lists them and the scopes\n"
            "that reach each): misuse would leave no trace in the audit log.\n"
            "1. Check whether the integration behind the key needs them (most need none).\n"
            "2. Replace the key with one whose scopes stop short of them (`instantly-audit check` lists\n"
            "   the scopes the audit log never showed in use), then delete this one."
        ),
    )  # fmt: skip

    what: ClassVar[str] = "scopes reaching unaudited operations"

    def risky(self, scopes: list[str]) -> list[str]:
        """The scopes that reach at least one unaudited high-impact operation (none for all:all and its equals)."""
        if unrestricted(scopes):
            return []
        return sorted({s for via in self._reach(scopes).values() for s in via})

    def _reach(self, scopes: list[str]) -> dict[str, list[str]]:
        reach = unaudited_reach(scopes)
        if not self.params.include_reads:  # type: ignore[attr-defined]
            reach = {op: kept for op, via in reach.items() if (kept := [s for s in via if not is_read_only(s)])}
        return reach

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """As the other scope rules; an open finding also lists the operations (``attributes.operations``)."""
        out = []
        for f in super().on_event(ctx, event):
            scopes = f.attributes.get("scopes")
            if f.status == "open" and isinstance(scopes, list):
                ops = sorted(self._reach(scopes))
                f = dataclasses.replace(f, summary=f"{f.summary} (unaudited: {', '.join(ops)})",
                                        attributes={**f.attributes, "operations": ops})  # fmt: skip
            out.append(f)
        return out
