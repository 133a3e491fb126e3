"""Webhook delivery as the simulator models it: POST to each matching webhook, log every attempt, retry, give up.

:meth:`WebhookDelivery.emit` sends one event's payload (API reference §7.4) to every active
webhook of the workspace that subscribes to its type (``all_events``, the type itself — a click is
subscribed as ``email_link_clicked`` and delivered as ``link_clicked`` — or, for a custom label,
a subscription without a type), restricted to its campaign when it names one, with the webhook's
custom ``headers``. Each attempt becomes a record of the delivery log (``GET /webhook-events``,
§7.3): one ``retry_group_id`` per delivery, ``retry_count`` 0 for the first attempt,
``will_retry`` and ``timestamp_next_retry`` while retries remain; a retry that gets through sets
``retry_successful: true`` on the group's attempts, giving up sets it ``false``.

Instantly documents none of the policy (§7.5): what fails (here: no answer within
``webhook_timeout_secs``, a refused connection or a non-2xx status), how often and how long it
retries (``webhook_retries`` more attempts, ``webhook_retry_delay_secs`` apart) are
:class:`~.config.SimConfig` choices. Retries happen when :meth:`retry_due` is called (tests step
the clock) or in the background (:meth:`run`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from .clock import Clock
from .config import SimConfig
from .models import JSON, Webhook, WebhookEvent
from .state import SimState

_ALIASES = {"email_link_clicked": "link_clicked"}
_TYPED = frozenset(
    {
        "email_sent", "email_opened", "reply_received", "auto_reply_received", "link_clicked", "email_bounced",
        "lead_unsubscribed", "account_error", "campaign_completed", "lead_neutral", "lead_interested",
        "lead_not_interested", "lead_meeting_booked", "lead_meeting_completed", "lead_closed",
        "lead_out_of_office", "lead_wrong_person", "lead_no_show", "supersearch_enrichment_completed",
    }
)  # fmt: skip
"""Payload types a typed subscription can name; anything else is a custom label."""


@dataclass
class _Delivery:
    """One payload on its way to one webhook."""

    hook_id: str
    workspace_id: str
    url: str
    headers: dict[str, str]
    payload: JSON
    group_id: str
    attempt: int = 0
    next_at: float = 0.0
    records: list[WebhookEvent] = field(default_factory=list)


def subscribes(hook: Webhook, payload: JSON) -> bool:
    """Whether ``hook`` is active and subscribed to ``payload``'s type and campaign."""
    if hook.status == -1:
        return False
    if hook.campaign is not None and hook.campaign != payload.get("campaign_id"):
        return False
    kind = str(payload.get("event_type") or "")
    wanted = hook.event_type
    if wanted == "all_events":
        return True
    if wanted is None:
        return kind not in _TYPED
    return _ALIASES.get(wanted, wanted) == kind


class WebhookDelivery:
    """Delivers webhook payloads and keeps their retries (see the module docstring)."""

    def __init__(self, state: SimState, config: SimConfig, clock: Clock):
        self.state, self.config, self.clock = state, config, clock
        self.pending: dict[str, _Delivery] = {}
        """Deliveries still to be retried, by retry group id."""
        self._session: aiohttp.ClientSession | None = None

    async def emit(self, workspace: str, payload: JSON) -> list[str]:
        """Send ``payload`` (its ``workspace`` field is filled in) to every webhook of ``workspace``
        that subscribes to it; return the retry group ids (one per webhook)."""
        ws = self.state.workspace(workspace).id
        body = {**payload, "workspace": payload.get("workspace", ws)}
        groups = []
        for hook in self.state.webhooks_of(ws):
            if subscribes(hook, body):
                d = _Delivery(hook.id, ws, hook.target_hook_url, dict(hook.headers or {}), body, self.state.new_id())
                groups.append(d.group_id)
                await self._attempt(d)
        return groups

    async def retry_due(self) -> int:
        """Make every retry whose time has come; return how many attempts were made."""
        now = self.clock()
        due = [d for d in self.pending.values() if d.next_at <= now]
        for d in sorted(due, key=lambda d: d.next_at):
            await self._attempt(d)
        return len(due)

    async def run(self, interval: float = 0.05) -> None:
        """Retry in the background, every ``interval`` seconds, until cancelled."""
        while True:
            await self.retry_due()
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _attempt(self, d: _Delivery) -> None:
        status, error, elapsed = await self._post(d)
        ok = status is not None and 200 <= status < 300
        retry = not ok and d.attempt < self.config.webhook_retries
        now = self.clock()
        record = self.state.add_webhook_event(
            d.workspace_id, d.url, success=ok, payload=dict(d.payload), retry_count=d.attempt, will_retry=retry,
            status_code=status, error_message=error, retry_group_id=d.group_id, response_time_ms=elapsed,
            timestamp_next_retry=now + self.config.webhook_retry_delay_secs if retry else None,
            lead_email=d.payload.get("lead_email") if isinstance(d.payload.get("lead_email"), str) else None,
        )  # fmt: skip
        d.records.append(record)
        if retry:
            d.attempt += 1
            d.next_at = now + self.config.webhook_retry_delay_secs
            self.pending[d.group_id] = d
            return
        self.pending.pop(d.group_id, None)
        if d.attempt > 0 or not ok:  # a retried delivery: say how it ended on every attempt
            for r in d.records:
                r.retry_successful = ok

    async def _post(self, d: _Delivery) -> tuple[int | None, str | None, float]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        started = time.perf_counter()
        headers = {**d.headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(
                d.url,
                data=orjson.dumps(d.payload),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.webhook_timeout_secs),
            ) as resp:
                await resp.read()
                status: int | None = resp.status
                error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except TimeoutError:
            status, error = None, "timeout"
        except (aiohttp.ClientError, OSError) as err:
            status, error = None, f"request failed ({type(err).__name__})"
        return status, error, round((time.perf_counter() - started) * 1000, 1)
