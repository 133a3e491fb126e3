"""API key rules: all:all keys, broad scopes, stale keys, unfinished rotations.

They read the snapshot events ``api_key.baseline|created|deleted|scopes_changed|renamed``
(attributes ``scopes``, ``name``, ``created_at``; target ``{kind: api_key, id, name}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from connectors.instantly.checklist import Basic
from connectors.instantly.enums import SCOPE_RESOURCES, SCOPES
from pipeline.clock import format_time, parse_time
from pipeline.rules.base import (
    DAY,
    CatalogRule,
    Finding,
    RuleContext,
    RuleMeta,
    RuleParams,
    attr,
    resolved,
    target_id,
    target_name,
)
from schemas.alert import Entity
from schemas.event import Event

SENSITIVE_RESOURCES = ("api_keys", "workspace_members", "workspaces", "workspace_billing",
                       "workspace_group_members", "accounts", "webhooks")  # fmt: skip
MINT_SCOPES = frozenset({"api_keys:create", "api_keys:all", "all:create"})
GRANT_SCOPES = frozenset({"workspace_members:create", "workspace_members:update",
                          "workspace_group_members:create", "workspace_group_members:update"})  # fmt: skip
"""Scopes that grant access: invite a member or change a role (``POST``/``PATCH /workspace-members``),
link another workspace into the agency group (``/workspace-group-members``). A key holding one can
make anyone an admin, so they count as broad although they name one action on one resource."""
MINT_OR_GRANT = MINT_SCOPES | GRANT_SCOPES
MAX_KEYS = 1000
"""API keys remembered per workspace by the inventory rules."""
MAX_ROTATIONS = 100
"""Rotations in flight remembered per workspace (oldest dropped first)."""
MAX_OLDS = 20
"""Old keys remembered per rotation."""


CRUD = ("create", "read", "update", "delete")
_RESOURCES = tuple(r for r in SCOPE_RESOURCES if r != "all")
SHOWN_SCOPES = 8
"""Risky scopes named in an alert summary (the alert's ``risky_scopes`` attribute holds them all)."""


def unrestricted(scopes: Iterable[str]) -> list[str]:
    """The scopes that give the key every permission ``all:all`` gives, or ``[]`` when it lacks one.

    Instantly allows an operation to ``{resource}:{action}``, ``{resource}:all``, ``all:{action}`` or
    ``all:all`` (API reference §4.2), so ``all:create`` + ``all:read`` + ``all:update`` + ``all:delete``,
    or ``<resource>:all`` on every resource, reach everything ``all:all`` reaches (the 27 operations
    whose scope the spec does not name aside) and must be judged like it.
    """
    held = set(scopes)
    if "all:all" in held:
        return ["all:all"]
    used: set[str] = set()
    for action in CRUD:
        if f"all:{action}" in held:
            used.add(f"all:{action}")
            continue
        for r in _RESOURCES:
            if f"{r}:{action}" not in SCOPES:
                continue  # email_verifications has no update/delete
            if f"{r}:all" in held:
                used.add(f"{r}:all")
            elif f"{r}:{action}" in held:
                used.add(f"{r}:{action}")
            else:
                return []
    return sorted(used)


def shown(scopes: list[str]) -> str:
    """Scopes for a summary: the first :data:`SHOWN_SCOPES`, then how many more."""
    more = len(scopes) - SHOWN_SCOPES
    return ", ".join(scopes[:SHOWN_SCOPES]) + (f" and {more} more" if more > 0 else "")


def scopes_of(event: Event) -> list[str] | None:
    """The key's scopes, or None when the event does not carry them."""
    s = attr(event, "scopes")
    return [x for x in s if isinstance(x, str)] if isinstance(s, list) else None


def key_entity(kid: str, name: str | None) -> Entity:
    """The API key as an alert entity."""
    return Entity("api_key", kid, name)


def key_label(kid: str, name: str | None) -> str:
    """``'name' (id)`` or the id."""
    return f"'{name}' ({kid})" if name else kid


def created_at(event: Event) -> float | None:
    """``attributes.created_at`` as epoch seconds, or None."""
    c = attr(event, "created_at")
    try:
        return parse_time(c) if isinstance(c, str) else None
    except ValueError:
        return None


class KeyAllowParams(RuleParams):
    """Options of the scope rules."""

    allowed_keys: list[str] = Field(default_factory=list, description="key ids or names exempt from the rule")


class _ScopeRule(CatalogRule[KeyAllowParams]):
    """Shared shape: a key holding risky scopes is an open condition until deleted or narrowed."""

    Params = KeyAllowParams
    what: ClassVar[str] = "risky scopes"

    def risky(self, scopes: list[str]) -> list[str]:
        """The scopes that make the key match."""
        raise NotImplementedError

    def note(self, bad: list[str]) -> str:
        """Text after the scopes in the summary."""
        return ""

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Open on a risky key, resolve when it is deleted or loses the scopes."""
        kid = target_id(event)
        if not kid:
            return ()
        key, name = f"key:{kid}", target_name(event)
        ent = (key_entity(kid, name),)
        if event.type == "api_key.deleted":
            self._forget(ctx, kid)
            if ctx.is_open(key):
                return (resolved(key, f"API key {key_label(kid, name)} was deleted", event_id=event.id, entities=ent),)
            return ()
        scopes = scopes_of(event)
        if scopes is None:
            return ()
        bad = [] if kid in self.params.allowed_keys or name in self.params.allowed_keys else self.risky(scopes)
        if bad:
            summary = f"API key {key_label(kid, name)} has {self.what}: {shown(bad)}{self.note(bad)}"
            main = Finding(
                key, summary, ent, event.id, resolvable=True, attributes={"scopes": scopes, "risky_scopes": bad}
            )
            seen = ctx.state.data.get("risky") or {}
            before = seen.get(kid)
            if before is not None and set(before) >= set(bad):
                return (main,)
            _remember(ctx.data.setdefault("risky", {}), kid, sorted(set(bad) | set(before or ())))
            added = sorted(set(bad) - set(before or ()))
            if before is None or not ctx.is_open(key):
                return (main,)
            # The open alert is suppressed for the window: announce the escalation as its own alert.
            grown = f"API key {key_label(kid, name)} gained {self.what}: {shown(added)} (now {shown(bad)})"
            attrs = {"scopes": scopes, "risky_scopes": bad, "added_scopes": added}
            return (main, Finding(f"grew:{kid}:{','.join(added)}", grown, ent, event.id, attributes=attrs))
        self._forget(ctx, kid)
        if ctx.is_open(key):
            return (
                resolved(
                    key, f"API key {key_label(kid, name)} no longer has the scopes", event_id=event.id, entities=ent
                ),
            )
        return ()

    @staticmethod
    def _forget(ctx: RuleContext, kid: str) -> None:
        seen = ctx.state.data.get("risky")
        if seen and kid in seen:
            del ctx.data["risky"][kid]


class AllScopeKeyRule(_ScopeRule):
    """``api_key.all_scope``: a key with ``all:all``, or scopes that together grant the same (also on the baseline)."""

    meta = RuleMeta(
        id="api_key.all_scope", title="API key with all:all scope", severity="critical", version=4,
        attack=("T1098.001", "T1078.004"), basic=Basic.NO_ALL_ALL, event_types=("api_key.*",), suppress_secs=DAY,
        runbook=(
            "1. Find who owns the key (name, creation time, audit log 'API key created').\n"
            "2. Create a replacement with only the scopes the integration needs (e.g. campaigns:read).\n"
            "3. Deploy it, verify, then delete the all:all key (Settings > Integrations > API keys).\n"
            "4. If nobody owns it, delete it now and review the audit log for its use."
        ),
    )  # fmt: skip

    what = "unrestricted access"
    sigma_detection: ClassVar[dict[str, Any]] = {
        "all_scope": {"attributes.scopes": "all:all"},
        "every_action": {"attributes.scopes|contains|all": [f"all:{a}" for a in CRUD]},
        "every_resource": {"attributes.scopes|contains|all": [f"{r}:all" for r in _RESOURCES]},
        "deleted": {"type": "api_key.deleted"},
        "condition": "(all_scope or every_action or every_resource) and not deleted",
    }
    """The open condition as a single-event detection (``rules export --format sigma``); a key that mixes
    wildcards with per-resource scopes to the same effect is found by the rule only."""

    def risky(self, scopes: list[str]) -> list[str]:
        """``all:all``, or the scopes that together grant every permission it grants (:func:`unrestricted`)."""
        return unrestricted(scopes)

    def note(self, bad: list[str]) -> str:
        """Say when the key is all:all in effect, not by name."""
        return "" if bad == ["all:all"] else " (together equivalent to all:all)"


class BroadScopeKeyRule(_ScopeRule):
    """``api_key.broad_scope``: wildcard actions, ``:all`` on sensitive resources, key minting or access granting.

    Keys holding ``all:all``, or scopes equivalent to it, are left to ``api_key.all_scope`` (one alert per key).
    """

    meta = RuleMeta(
        id="api_key.broad_scope", title="API key with broad scopes", severity="high", version=4,
        attack=("T1098.001",), basic=Basic.SCOPED_KEYS, event_types=("api_key.*",), suppress_secs=DAY,
        runbook=(
            "1. List what the integration behind the key really calls.\n"
            "2. Replace all:<action> and <resource>:all scopes on api_keys, workspace_members, workspaces,\n"
            "   workspace_billing, workspace_group_members, accounts and webhooks with exact scopes.\n"
            "3. Only a key-management tool should hold api_keys:create, and only a provisioning tool\n"
            "   workspace_members:create|update or workspace_group_members:create|update (they make anyone an admin);\n"
            "   rotate to a narrowed key, delete this one."
        ),
    )  # fmt: skip

    what = "broad scopes"

    def risky(self, scopes: list[str]) -> list[str]:
        """``all:<action>``, ``<sensitive>:all``, the scopes that create keys and those that grant access."""
        if unrestricted(scopes):
            return []
        out = []
        for s in scopes:
            res, _, action = s.partition(":")
            if res == "all" or (action == "all" and res in SENSITIVE_RESOURCES) or s in MINT_OR_GRANT:
                out.append(s)
        return out


def _inventory(ctx: RuleContext) -> dict[str, Any]:
    keys: dict[str, Any] = ctx.data.setdefault("keys", {})
    return keys


def _remember(keys: dict[str, Any], kid: str, value: list[Any]) -> None:
    keys.pop(kid, None)
    keys[kid] = value
    while len(keys) > MAX_KEYS:
        del keys[next(iter(keys))]


class StaleParams(RuleParams):
    """Options of ``api_key.stale``."""

    key_max_age_days: float = Field(90.0, gt=0, le=3650)


class StaleKeyRule(CatalogRule[StaleParams]):
    """``api_key.stale``: a key older than ``key_max_age_days``; one reminder per suppression window."""

    Params = StaleParams
    meta = RuleMeta(
        id="api_key.stale", title="API key not rotated", severity="medium", attack=("T1078.004",),
        basic=Basic.ROTATION, event_types=("api_key.*",), ticks=True, suppress_secs=7 * DAY,
        runbook=(
            "1. Create a new key with the same (or fewer) scopes.\n"
            "2. Update the secret manager / environment of the integration and deploy.\n"
            "3. Verify the integration works with the new key, then delete the old one.\n"
            "Quarterly rotation is recommended; the limit is rules.api_key.stale.key_max_age_days."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Track keys with their creation time; check the one this event is about."""
        kid = target_id(event)
        if not kid:
            return ()
        keys = _inventory(ctx)
        if event.type == "api_key.deleted":
            keys.pop(kid, None)
            key = f"key:{kid}"
            return (resolved(key, f"Stale API key {kid} was deleted", event_id=event.id),) if ctx.is_open(key) else ()
        prev = keys.get(kid)
        created = created_at(event) or (prev[0] if prev else None)
        if created is None:
            return ()
        name = target_name(event) or (prev[1] if prev else None)
        _remember(keys, kid, [created, name])
        return self._check(ctx, kid, created, name, event.id)

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Re-check every known key."""
        out: list[Finding] = []
        now, limit, tracks, window = ctx.now, self.params.key_max_age_days, ctx.state.tracks, ctx.suppress_secs
        for kid, (created, name) in ctx.state.data.get("keys", {}).items():
            if (now - created) / DAY < limit:
                continue  # (what _check decides first, without the call)
            tr = tracks.get(f"key:{kid}")
            if tr is not None and tr.emitted is not None and not now - tr.emitted >= window:
                continue  # not ctx.due(key): a reminder went out within the window
            out.extend(self._check(ctx, kid, created, name, None))
        return out

    def _check(self, ctx: RuleContext, kid: str, created: float, name: str | None, eid: str | None) -> list[Finding]:
        age_days = (ctx.now - created) / DAY
        limit = self.params.key_max_age_days
        if age_days < limit or not ctx.due(f"key:{kid}"):
            return []
        summary = f"API key {key_label(kid, name)} is {age_days:.0f} days old (rotate every {limit:g} days)"
        attrs = {"age_days": int(age_days), "created_at": format_time(created), "key_max_age_days": limit}
        return [
            Finding(f"key:{kid}", summary, (key_entity(kid, name),), eid, resolvable=True, count=0, attributes=attrs)
        ]


def _norm_name(name: Any) -> str:
    """A key name compared for rotation pairing (case and surrounding space ignored; "" when none)."""
    return name.strip().casefold() if isinstance(name, str) else ""


_ROTATION_WORDS = frozenset({"old", "new", "rotated", "rotation", "replacement", "copy", "key", "api", "v"})


def _name_stem(name: Any) -> str:
    """What is left of a key name without numbers, dates and rotation words (``crm-2026`` → ``crm``,
    ``Zapier (new) v2`` → ``zapier``): two keys whose stems differ serve different integrations."""
    words = re.findall(r"[^\W\d_]+", _norm_name(name))
    return "".join(w for w in words if w not in _ROTATION_WORDS)


def _may_replace(old_name: Any, new_name: Any) -> bool:
    """Whether a key with the same scopes may be the replacement of another by their names: yes when the
    stems match or a name says nothing (missing, only numbers); no for two named integrations
    (``Looker dashboard`` and ``Client Globex reporting``: an agency keeps one read-only key per client)."""
    a, b = _name_stem(old_name), _name_stem(new_name)
    return not a or not b or a == b


class RotationParams(RuleParams):
    """Options of ``api_key.rotation_incomplete``."""

    grace_period_days: float = Field(7.0, gt=0, le=365)


class RotationIncompleteRule(CatalogRule[RotationParams]):
    """``api_key.rotation_incomplete``: a new key repeats an old key's name (``keys rotate --scopes`` narrows the
    scopes and keeps the name) or its scopes under a name of the same stem (``crm-2025`` → ``crm-2026``; an
    unnamed key), and the old one outlives the grace period. Keys with the same scopes for different
    integrations (one read-only key per client) are no rotation."""

    Params = RotationParams
    meta = RuleMeta(
        id="api_key.rotation_incomplete", title="API key rotation not finished", severity="low", version=3,
        attack=("T1078.004",), basic=Basic.ROTATION, event_types=("api_key.*",), ticks=True, suppress_secs=7 * DAY,
        runbook=(
            "A new key with the same scopes or the same name was created, but the key it replaces still exists.\n"
            "1. Confirm every deployment uses the new key (401s after deletion mean one does not).\n"
            "2. Delete the old key (DELETE /api/v2/api-keys/{id})."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Keep the key inventory and the rotations in flight; then check them."""
        kid = target_id(event)
        if not kid:
            return ()
        keys = _inventory(ctx)
        rot: dict[str, Any] = ctx.data.setdefault("rot", {})
        out: list[Finding] = []
        if event.type == "api_key.deleted":
            keys.pop(kid, None)
            for new_id in list(rot):
                olds = rot[new_id]["old"]
                if new_id == kid or kid in olds:
                    done = olds if new_id == kid else [kid]
                    out.extend(resolved(f"old:{o}", f"Old API key {o} was deleted; rotation finished",
                                        event_id=event.id) for o in done if ctx.is_open(f"old:{o}"))  # fmt: skip
                    rot[new_id]["old"] = [] if new_id == kid else [o for o in olds if o != kid]
                if not rot[new_id]["old"]:
                    del rot[new_id]
            return out
        prev = keys.get(kid)
        scopes = scopes_of(event)
        scopes_sorted = sorted(set(scopes)) if scopes is not None else (prev[0] if prev else None)
        created = created_at(event) or (prev[1] if prev else ctx.now)
        _remember(keys, kid, [scopes_sorted, created, target_name(event) or (prev[2] if prev else None)])
        if event.type == "api_key.created" and scopes_sorted is not None:
            name = _norm_name(target_name(event))
            new_name = target_name(event)
            olds = [
                o
                for o, (s, c, n) in keys.items()
                if o != kid
                and c <= created
                and ((s == scopes_sorted and _may_replace(n, new_name)) or (name and _norm_name(n) == name))
            ]
            if olds:
                rot.pop(kid, None)
                rot[kid] = {"old": olds[-MAX_OLDS:], "t": created}
        for new_id in [n for n in rot if n not in keys]:  # replacement keys no longer in the inventory
            del rot[new_id]
        while len(rot) > MAX_ROTATIONS:
            del rot[next(iter(rot))]
        out.extend(self._check(ctx, event.id))
        return out

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Check the rotations in flight."""
        return self._check(ctx, None)

    def _check(self, ctx: RuleContext, eid: str | None) -> list[Finding]:
        keys = ctx.state.data.get("keys", {})
        out = []
        grace = self.params.grace_period_days * DAY
        reported: set[str] = set()
        now, tracks, window = ctx.now, ctx.state.tracks, ctx.suppress_secs
        for new_id, r in ctx.state.data.get("rot", {}).items():
            if ctx.now - r["t"] < grace:
                continue
            new_name = keys.get(new_id, [None, None, None])[2]
            for o in r["old"]:
                if o not in keys or o in reported:
                    continue
                tr = tracks.get(f"old:{o}")
                if tr is not None and tr.emitted is not None and not now - tr.emitted >= window:
                    continue  # not ctx.due(f"old:{o}")
                reported.add(o)
                old_name = keys[o][2]
                how = "same scopes" if keys[o][0] == keys.get(new_id, [None])[0] else "same name"
                days = (ctx.now - r["t"]) / DAY
                summary = (
                    f"API key {key_label(o, old_name)} is still present {days:.0f} days after "
                    f"{key_label(new_id, new_name)} replaced it ({how})"
                )
                ents = (key_entity(o, old_name), key_entity(new_id, new_name))
                attrs = {"replacement_key_id": new_id, "rotation_started": format_time(r["t"])}
                out.append(Finding(f"old:{o}", summary, ents, eid, resolvable=True, count=0, attributes=attrs))
        return out
