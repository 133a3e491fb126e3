"""``pipeline.unseen_creation``: the audit log records an API key or webhook created that no snapshot ever showed.

The mirror of ``pipeline.untracked_change`` (a snapshot change with no audit record): here the
audit record is there and the snapshot is not. A key created, used and deleted between two
snapshot polls (create-use-revoke, ATT&CK T1098.001 / T1078.004) leaves exactly this trace:
audit 37 (and 38), and a key list that never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from connectors.instantly.checklist import Basic
from pipeline.clock import format_time, parse_time
from pipeline.rules.base import CatalogRule, Finding, RuleContext, RuleMeta, RuleParams, attr, target_id
from schemas.alert import Entity
from schemas.event import Event

API_KEY_CREATED = 37
API_KEY_DELETED = 38
WEBHOOK_CREATED = 18
MAX_ITEMS = 500
"""Pending creations, unmatched snapshot creations and deletion records remembered per kind and workspace."""
DOWN_SPAN = 2 * 3600.0
"""How long a ``pipeline.stream_unavailable`` report covers (the poller repeats it hourly while it lasts)."""
_KINDS = {"api_keys": "api_key", "webhooks": "webhook"}
_CREATION = {API_KEY_CREATED: "api_key", WEBHOOK_CREATED: "webhook"}
_LABEL = {"api_key": "API key", "webhook": "Webhook"}
_SEVERITY = {"api_key": "high", "webhook": "medium"}


class UnseenParams(RuleParams):
    """Options of ``pipeline.unseen_creation``."""

    window_secs: float = Field(
        900.0, gt=0, le=86_400, description="how long the snapshot stream has to show a created key or webhook"
    )
    max_record_delay_secs: float = Field(
        3600.0,
        ge=0,
        le=7 * 86_400,
        description="audit records read later than this after their own time (history backfill, sweeps) are not judged",
    )


def _time(text: str) -> float | None:
    try:
        return parse_time(text)
    except (ValueError, TypeError):
        return None


def _span(secs: float) -> str:
    return f"{secs / 60:g} min" if secs >= 60 else f"{secs:g} s"


def _nearest(items: list[list[Any]], t: float, w: float, oid: str | None = None) -> list[Any] | None:
    """The entry ``[time, id, ...]`` nearest to ``t`` within ``w`` (only id ``oid`` when given)."""
    best, gap = None, w
    for it in items:
        if oid is not None and it[1] != oid:
            continue
        g = abs(it[0] - t)
        if g <= gap:
            best, gap = it, g
    return best


class UnseenCreationRule(CatalogRule[UnseenParams]):
    """``pipeline.unseen_creation``: an audit creation (37 API key, 18 webhook) no snapshot showed in ``window_secs``.

    **Pairing.** An audit record 37 names the *acting* key, never the created one, so API keys pair
    by time: each record 37 consumes one ``api_key.created``/``baseline`` whose ``created_at`` is
    within ``window_secs`` of it (nearest first), in either order; two records and one new key
    leave one record unpaired. A record 18 carries ``webhook_id`` and pairs with any ``webhook.*``
    snapshot event of that id (by time, like keys, when it has none).

    **Judging.** An unpaired creation at *t* is judged once the audit log (records 18/37/38) or a
    tick has passed *t* + ``window_secs``: it alerts (API key high, webhook medium; a later
    unpaired record 38 is named as the deletion) unless it is not judgeable:

    * the record was read more than ``max_record_delay_secs`` after its own time (a history
      backfill at first start, the daily sweep of late records): the snapshots of that time are
      no longer remembered, and before the first snapshot nothing could have been seen;
    * *t* is before the first snapshot event of that stream the rule saw (``since``): the pipeline
      was not watching yet. A stream that never produced an event (not polled, or a workspace
      without webhooks) is never judged;
    * the stream was reported unavailable (``pipeline.stream_unavailable``, or
      ``pipeline.poller_unauthorized``) within 2 h before *t* or during the window, and no
      snapshot event of it arrived since.

    Findings are facts (the object is gone), not open conditions: they expire after the
    suppression window like ``pipeline.untracked_change``.
    """

    Params = UnseenParams
    meta = RuleMeta(
        id="pipeline.unseen_creation", title="API key or webhook created and gone before any snapshot saw it",
        severity="high", attack=("T1098.001", "T1078.004"), basic=Basic.AUDIT_LOGS,
        event_types=("audit.*", "api_key.*", "webhook.*", "pipeline.stream_unavailable",
                     "pipeline.stream_recovered", "pipeline.poller_unauthorized"), version=2,
        activity_codes=frozenset({WEBHOOK_CREATED, API_KEY_CREATED, API_KEY_DELETED}), ticks=True,
        status="test", related=("pipeline.untracked_change",),
        falsepositives=(
            "A snapshot stream failing with transient errors (5xx, timeouts) for longer than window_secs",
            "snapshot_interval_secs above window_secs with audit_triggers_snapshots off",
        ),
        runbook=(
            "The audit log says a key (or webhook) was created, but no key (webhook) list the pipeline took showed\n"
            "it: it existed only between two polls. For a key this is create-use-revoke.\n"
            "1. Find the audit records around the time: who created it (user, acting key, IP), and what that\n"
            "   actor and any unknown key did next (exports, webhooks, member changes).\n"
            "2. Treat the creator's credentials as compromised unless they confirm it: rotate the acting key,\n"
            "   reset the user's password and MFA.\n"
            "3. For a webhook: data may have been streamed to its URL while it existed (Settings > Webhooks logs)."
        ),
    )  # fmt: skip

    def on_event(self, ctx: RuleContext, event: Event) -> Iterable[Finding]:
        """Pair audit creations with snapshot events; judge the creations whose window passed."""
        d = ctx.data
        now = ctx.now
        src = event.source.kind
        if src == "audit_log":
            code = attr(event, "activity_code")
            if now > d.get("hi", 0.0):
                d["hi"] = now
            if code == API_KEY_DELETED:
                self._audit_deleted(self._kind(d, "api_key"), now)
            elif code in _CREATION:
                self._audit_created(d, _CREATION[code], event, now)
        elif src == "snapshot":
            kind = event.type.partition(".")[0]
            if kind in _LABEL:
                self._snapshot(self._kind(d, kind), event, now, self._horizon(d))
        elif event.type == "pipeline.poller_unauthorized":
            for kind in _LABEL:
                self._kind(d, kind)["down"] = now
        elif event.type == "pipeline.stream_unavailable":
            down = _KINDS.get(str(attr(event, "stream")))
            if down is not None:
                self._kind(d, down)["down"] = now
        elif event.type == "pipeline.stream_recovered":  # reads again: an unchanged list makes no snapshot event
            up = _KINDS.get(str(attr(event, "stream")))
            if up is not None and up in d and d[up]["down"] is not None and now >= d[up]["down"]:
                d[up]["down"] = None
        return self._judge(ctx, d.get("hi", 0.0))

    def on_tick(self, ctx: RuleContext) -> Iterable[Finding]:
        """Judge creations whose window passed while the audit log was quiet."""
        d = ctx.state.data
        if not any(d.get(k, {}).get("pend") for k in _LABEL):
            return ()
        return self._judge(ctx, ctx.now)

    # ---- internals -------------------------------------------------------------------------
    @staticmethod
    def _kind(d: dict[str, Any], kind: str) -> dict[str, Any]:
        k: dict[str, Any] | None = d.get(kind)
        if k is None:
            k = d[kind] = {"since": None, "down": None, "pend": [], "seen": [], "del": [], "sdel": []}
        return k

    def _horizon(self, d: dict[str, Any]) -> float:
        p = self.params
        return float(d.get("hi", 0.0)) - p.window_secs - p.max_record_delay_secs

    def _audit_created(self, d: dict[str, Any], kind: str, event: Event, t: float) -> None:
        p = self.params
        k = self._kind(d, kind)
        seen_at = _time(event.observed_at)
        if seen_at is not None and seen_at - t > p.max_record_delay_secs:
            return  # backfill or sweep: the snapshots of that time are gone (or were never taken)
        if k["since"] is not None and t < k["since"]:
            return  # before the pipeline watched the stream
        oid = target_id(event) if kind == "webhook" else None
        hit = _nearest(k["seen"], t, float("inf") if oid else p.window_secs, oid)
        if hit is not None:
            k["seen"].remove(hit)
            return
        a = event.actor
        actor = [a.user_id, a.user_name, a.api_key_id, a.ip] if a is not None else [None, None, None, None]
        k["pend"].append([t, oid, event.id, event.source.record_id or event.id, actor])
        del k["pend"][:-MAX_ITEMS]

    def _audit_deleted(self, k: dict[str, Any], t: float) -> None:
        hit = _nearest([[s, None] for s in k["sdel"]], t, self.params.window_secs)
        if hit is not None:
            k["sdel"].remove(hit[0])
        else:
            k["del"] = [*k["del"][-MAX_ITEMS + 1 :], t]

    def _snapshot(self, k: dict[str, Any], event: Event, now: float, floor: float) -> None:
        w = self.params.window_secs
        seen_at = _time(event.observed_at)
        if seen_at is not None:
            if k["since"] is None or seen_at < k["since"]:
                k["since"] = seen_at
            if k["down"] is not None and seen_at >= k["down"]:
                k["down"] = None  # the stream works again
        suffix = event.type.partition(".")[2]
        oid = target_id(event)
        if event.type == "api_key.deleted":
            hit = _nearest([[x, None] for x in k["del"]], now, w)
            if hit is not None:
                k["del"].remove(hit[0])
            else:
                k["sdel"] = [*k["sdel"][-MAX_ITEMS + 1 :], now]
        pend = k["pend"]
        by_id = next((p for p in pend if oid is not None and p[1] == oid), None)
        if by_id is not None:
            pend.remove(by_id)
            return
        if suffix not in ("created", "baseline") or not oid:
            return
        c = attr(event, "created_at")
        ref = (_time(c) if isinstance(c, str) else None) or now
        hit = _nearest([p for p in pend if p[1] is None], ref, w)
        if hit is not None:
            pend.remove(hit)
        elif ref >= floor and not any(x[1] == oid for x in k["seen"]):  # (a baseline's old keys are not kept)
            k["seen"].append([ref, oid])
            del k["seen"][:-MAX_ITEMS]

    def _judge(self, ctx: RuleContext, hi: float) -> list[Finding]:
        d = ctx.state.data
        w = self.params.window_secs
        out: list[Finding] = []
        for kind in _LABEL:
            k = d.get(kind)
            if not k:
                continue
            keep = []
            for p in k["pend"]:
                t = p[0]
                if hi < t + w:
                    keep.append(p)
                    continue
                since, down = k["since"], k["down"]
                if since is None or t < since or (down is not None and t - DOWN_SPAN <= down):
                    continue  # the stream was not (known to be) watched: not judged
                out.append(self._finding(k, kind, p, w))
            if len(keep) != len(k["pend"]):
                k["pend"] = keep
                ctx.state.data_touched = True
            floor = self._horizon(d)
            if k["seen"] and min(x[0] for x in k["seen"]) < floor:
                k["seen"] = [x for x in k["seen"] if x[0] >= floor]
                ctx.state.data_touched = True
            for name in ("del", "sdel"):
                if k[name] and min(k[name]) < floor:
                    k[name] = [x for x in k[name] if x >= floor]
                    ctx.state.data_touched = True
        return out

    def _finding(self, k: dict[str, Any], kind: str, p: list[Any], w: float) -> Finding:
        t, oid, eid, rid, (uid, uname, kid, ip) = p
        who = uname or uid or (f"API key {kid}" if kid else None) or "someone"
        ents: list[Entity] = []
        if kind == "webhook" and oid:
            ents.append(Entity("webhook", oid, None))
        if uid or uname:
            ents.append(Entity("user", uid, uname))
        if kid:
            ents.append(Entity("api_key", kid, None))
        if ip:
            ents.append(Entity("ip", ip, None))
        attrs: dict[str, Any] = {
            "object": kind, "created_at": format_time(t), "window_secs": w, "audit_record": rid,
            "pairing": "webhook id" if oid else "time (the audit record does not name the created object)",
        }  # fmt: skip
        gone = ""
        if kind == "api_key":
            dele = min((x for x in k["del"] if x >= t), default=None)
            if dele is not None:
                k["del"].remove(dele)
                attrs["deleted_at"] = format_time(dele)
                gone = f"; an 'API key deleted' record followed at {format_time(dele)}"
        what = f"Webhook {oid}" if oid else f"An {_LABEL[kind]}" if kind == "api_key" else "A webhook"
        summary = (f"{what} created by {who}{f' from {ip}' if ip else ''} at {format_time(t)} (audit log) was in no "
                   f"{'key' if kind == 'api_key' else 'webhook'} list within {_span(w)}{gone}: "
                   f"it existed only between two snapshots")  # fmt: skip
        return Finding(
            f"{kind}:{oid or rid}", summary, tuple(ents), eid, severity=_SEVERITY[kind],  # type: ignore[arg-type]
            attributes=attrs, time=t + w,
        )  # fmt: skip
