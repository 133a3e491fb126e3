"""Slack sink (type ``slack``): readable alert messages through an incoming webhook.

* The webhook URL is a secret (its path is the token): it is a ``Secret`` field, registered
  with the log redactor, and never part of an error message (errors name ``slack <sink id>``).
* ``format``: ``native`` only — the message is built from the native record.
* One Block Kit message per record: severity emoji and title, the summary, workspace,
  severity, rule, counts, the entities, and the runbook (a link when it is an http(s) URL).
  Text from Instantly (names, summaries) is escaped for mrkdwn (``&``, ``<``, ``>``), so a
  member called ``<!channel>`` cannot ping anyone; link unfurling is off.
* At most one message per ``min_interval_secs`` (1 s, Slack's limit for a webhook), paced
  locally. HTTP 429 defers the next post by ``Retry-After`` and raises
  :class:`BackpressureError` (the runner retries the batch no sooner). 5xx and transport
  errors raise a retriable :class:`SinkError`. 403 (``action_prohibited``, ``invalid_token``),
  404 (``no_service``, ``channel_not_found``), 410 (``channel_is_archived``) and 400
  ``user_not_found``/``no_service_id`` are about the webhook, not the message: a non-retriable
  :class:`SinkError` (nothing is dead-lettered, the runner's circuit opens). Any other 4xx
  (400 ``invalid_payload``, ``no_text``, ``invalid_blocks``) is a non-retriable failure of that record (dead letter).
* Slack has no de-duplication key: a ledger of the last ``sent_ledger_size`` record ids
  posted by this process skips records already posted when a batch is retried.
* Subscribes to ``alerts`` by default; events, if subscribed, get a compact message.
* ``healthcheck()`` posts an empty JSON object: Slack answers 400 ``no_text`` (or
  ``invalid_payload``) for a live webhook without posting anything.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.base import Secret, is_unresolved
from pipeline.config.transport import plaintext_url, refuse_unless_allowed
from pipeline.delivery.base import Delivery, Failure, SendResult, SinkConfig
from pipeline.delivery.http import USER_AGENT, parse_retry_after, transport_cause
from pipeline.errors import BackpressureError, SinkError
from pipeline.formats import classify
from pipeline.observability.logs import redact_text, register_secret

Sleep = Callable[[float], Awaitable[None]]

EMOJI = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵", "info": "⚪"}
RESOLVED = "✅"
DEFAULT_RETRY_AFTER_SECS = 30.0
HEADER_MAX, SECTION_MAX, FIELD_MAX, TEXT_MAX = 150, 3000, 2000, 3000
# Slack's answers about the webhook rather than the message: 403 action_prohibited/invalid_token,
# 404 no_service/channel_not_found/no_team, 410 channel_is_archived/team_disabled.
ENDPOINT_ERRORS = frozenset({403, 404, 410})
# Slack's 400 answers about the webhook (its "Handling errors" table): the user a DM webhook posts
# to is gone (user_not_found; our payloads name no user) or the URL lacks its service id. Every
# message would get the same answer, so they are not the message's fault and must not dead-letter it.
ENDPOINT_400_ERRORS = ("user_not_found", "no_service_id")
_PARTIAL_ENTITY = re.compile(r"&(?:a|am|amp|l|lt|g|gt)?$")


URL_EXPECTED = "must be the https URL of a Slack incoming webhook (host hooks.slack.com, path /services/…)"
"""In words, not as an example URL: error output is redacted, and an example's path would be
fingerprinted like a real webhook's (``https://hooks.slack.com/sha256:…``)."""


def _default_topics() -> list[Literal["events", "alerts"]]:
    return ["alerts"]


class SlackSinkConfig(SinkConfig):
    """Options of the Slack sink."""

    FORMATS: ClassVar[tuple[str, ...]] = ("native",)  # a Block Kit message built from the native record

    type: Literal["slack"] = "slack"
    webhook_url: Secret = Field(description="incoming webhook URL (a secret: ${ENV} or webhook_url_file)")
    topics: list[Literal["events", "alerts"]] = Field(default_factory=_default_topics)
    batch_max_records: int = Field(20, ge=1, le=100_000, description="small: a batch takes ~1 s per record")
    min_interval_secs: float = Field(1.0, gt=0, description="at least this long between two posts (Slack: 1/s)")
    request_timeout_secs: float = Field(10.0, gt=0)
    max_entities: int = Field(10, ge=1, le=40, description="entities listed in a message")
    sent_ledger_size: int = Field(10_000, ge=0, description="record ids remembered to skip re-posts on retry")

    allow_insecure: bool = Field(False, description="accept an http:// webhook URL (the URL is the credential)")

    def insecure_transport(self) -> list[str]:
        """What is insecure about this destination (empty: nothing)."""
        if plaintext_url(self.webhook_url.get_secret_value()):
            return ["the webhook URL (a credential) would travel over plain http://"]
        return []

    @model_validator(mode="after")
    def _transport(self) -> SlackSinkConfig:
        refuse_unless_allowed(self.insecure_transport(), self.allow_insecure)
        return self

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, v: SecretStr) -> SecretStr:
        if is_unresolved(v):  # not read by this command (config validate --no-environment, status)
            return v
        try:
            parts = urlsplit(v.get_secret_value())
        except ValueError:
            raise ValueError(URL_EXPECTED) from None
        if parts.scheme not in ("https", "http") or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(URL_EXPECTED)
        return v


def mrkdwn(text: Any, limit: int = SECTION_MAX) -> str:
    """Escape untrusted text for Slack mrkdwn (``&``, ``<``, ``>``) and cut it to ``limit``."""
    return cut_mrkdwn(str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), limit)


def cut_mrkdwn(text: str, limit: int) -> str:
    """Cut escaped mrkdwn to ``limit`` characters without leaving half an entity (``&am…``)."""
    if len(text) <= limit:
        return text
    return _PARTIAL_ENTITY.sub("", text[: limit - 1]) + "…"


def plain(text: Any, limit: int) -> str:
    """Cut plain text to ``limit`` characters."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _link(url: Any, label: str) -> str:
    """A mrkdwn link for a safe http(s) URL, else the escaped text."""
    if isinstance(url, str) and url.startswith(("https://", "http://")) and not any(c in url for c in "|<> \n"):
        return f"<{url.replace('&', '&amp;')}|{label}>"  # Slack decodes &amp; back inside the link
    return mrkdwn(url, 500)


def _workspace(body: Mapping[str, Any]) -> str:
    ws = body.get("workspace") or {}
    name, wid = ws.get("name"), ws.get("id")
    return f"{mrkdwn(name, 200)} (`{mrkdwn(wid, 100)}`)" if name else f"`{mrkdwn(wid, 100)}`"


def alert_message(body: Mapping[str, Any], *, max_entities: int = 10) -> dict[str, Any]:
    """The Block Kit payload for an Alert v1 dict."""
    rule = body.get("rule") or {}
    severity = str(rule.get("severity") or "info")
    resolved = body.get("status") == "resolved"
    emoji = RESOLVED if resolved else EMOJI.get(severity, "⚪")
    title = str(rule.get("title") or rule.get("id") or "Alert")
    head = f"{emoji} {'Resolved' if resolved else severity.capitalize()}: {title}"
    fields = [
        f"*Workspace*\n{_workspace(body)}",
        f"*Severity*\n{mrkdwn(severity.capitalize(), 50)}",
        f"*Rule*\n`{mrkdwn(rule.get('id'), 200)}` v{mrkdwn(rule.get('version'), 20)}",
        f"*Status*\n{'Resolved' if resolved else 'Open'}",
        f"*Seen*\n{mrkdwn(body.get('count', 1), 20)}x · first {mrkdwn(body.get('first_seen'), 40)}"
        f" · last {mrkdwn(body.get('last_seen'), 40)}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(head, HEADER_MAX), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn(body.get("summary") or title)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": cut_mrkdwn(f, FIELD_MAX)} for f in fields]},
    ]
    entities = [e for e in body.get("entities") or [] if isinstance(e, Mapping)]
    if entities:
        lines = [
            f"• {mrkdwn(e.get('kind'), 50)}: {mrkdwn(e.get('name') or e.get('id'), 200)}"
            + (f" (`{mrkdwn(e.get('id'), 100)}`)" if e.get("name") and e.get("id") else "")
            for e in entities[:max_entities]
        ]
        if len(entities) > max_entities:
            lines.append(f"…and {len(entities) - max_entities} more")
        entity_text = cut_mrkdwn("*Entities*\n" + "\n".join(lines), SECTION_MAX)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": entity_text}})
    context = []
    if rule.get("runbook"):
        context.append(f"Runbook: {_link(rule.get('runbook'), 'open the runbook')}")
    if rule.get("attack"):
        context.append("ATT&amp;CK " + ", ".join(mrkdwn(a, 20) for a in rule.get("attack") or []))
    context.append(f"Alert `{mrkdwn(body.get('id'), 64)}`")
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": cut_mrkdwn(c, FIELD_MAX)} for c in context]}
    )
    ws = body.get("workspace") or {}
    # the text is all a mobile notification shows: it says "resolved" in words and whom the alert is about
    fallback = f"{emoji} [{'RESOLVED' if resolved else severity.upper()}] {title} — {ws.get('name') or ws.get('id')}"
    if entities:
        first = entities[0]
        fallback += f" — {first.get('kind')}: {first.get('name') or first.get('id')}"
    return {"text": mrkdwn(fallback, TEXT_MAX), "blocks": blocks, "unfurl_links": False, "unfurl_media": False}


def event_message(body: Mapping[str, Any]) -> dict[str, Any]:
    """A compact Block Kit payload for an Event v1 dict."""
    act = classify(body)
    actor = body.get("actor") or {}
    target = body.get("target") or {}
    who = actor.get("user_name") or actor.get("user_id") or actor.get("api_key_id") or "unknown"
    what = f"{target.get('kind')}: {target.get('name') or target.get('id')}" if target else "—"
    fields = [
        f"*Workspace*\n{_workspace(body)}",
        f"*Actor*\n{mrkdwn(who, 300)}" + (f" from `{mrkdwn(actor.get('ip'), 60)}`" if actor.get("ip") else ""),
        f"*Target*\n{mrkdwn(what, 500)}",
        f"*Time*\n{mrkdwn(body.get('time'), 40)}",
    ]
    head = plain(f"\u2139\ufe0f {act.label}", HEADER_MAX)  # information source emoji
    ids = f"`{mrkdwn(body.get('type'), 128)}` · event `{mrkdwn(body.get('id'), 64)}`"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": head, "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": cut_mrkdwn(f, FIELD_MAX)} for f in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": cut_mrkdwn(ids, FIELD_MAX)}]},
    ]
    ws = body.get("workspace") or {}
    return {
        "text": mrkdwn(f"{act.label} — {ws.get('name') or ws.get('id')}", TEXT_MAX),
        "blocks": blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }


class SlackSink:
    """Posts alerts (and optionally events) to a Slack incoming webhook."""

    Config: ClassVar[type[SinkConfig]] = SlackSinkConfig
    type: ClassVar[str] = "slack"

    def __init__(
        self, sink_id: str, config: SinkConfig, *, clock: Clock = SYSTEM_CLOCK, sleep: Sleep = asyncio.sleep
    ) -> None:
        if not isinstance(config, SlackSinkConfig):
            raise TypeError(f"sinks.{sink_id}: expected a slack config, got {type(config).__name__}")
        self.sink_id = sink_id
        self.config = config
        self._url = config.webhook_url.get_secret_value()
        self._path = urlsplit(self._url).path
        register_secret(self._url)
        register_secret(self._path)
        self._name = f"slack {sink_id}"
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._next_at = float("-inf")
        self._sent: OrderedDict[str, None] = OrderedDict()
        self.posted = 0

    async def __aenter__(self) -> SlackSink:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_secs),
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
                trust_env=False,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def message(self, d: Delivery) -> dict[str, Any]:
        """The Block Kit payload for one delivery."""
        if d.kind == "alert":
            return alert_message(d.body, max_entities=self.config.max_entities)
        return event_message(d.body)

    # ------------------------------------------------------------------ pacing
    async def _pace(self) -> None:
        """Wait until the next post is allowed, then reserve the slot after it."""
        now = self._clock.monotonic()
        if self._next_at > now:
            await self._sleep(self._next_at - now)
            now = self._clock.monotonic()
        self._next_at = max(now, self._next_at) + self.config.min_interval_secs

    def _defer(self, seconds: float) -> None:
        self._next_at = max(self._next_at, self._clock.monotonic() + seconds)

    def _remember(self, delivery_id: str) -> None:
        if self.config.sent_ledger_size:
            self._sent[delivery_id] = None
            while len(self._sent) > self.config.sent_ledger_size:
                self._sent.popitem(last=False)

    # ------------------------------------------------------------------ HTTP
    def _clean(self, text: str) -> str:
        """Slack's short error text, never echoing the URL."""
        text = text.replace(self._url, "<redacted>").replace(self._path, "<redacted>")
        return redact_text(text).strip()[:120]

    async def _post(self, payload: bytes) -> tuple[int, str, float | None]:
        if self._session is None:
            raise SinkError(f"{self._name}: not open (use 'async with')")
        failure: SinkError
        try:
            async with self._session.post(self._url, data=payload, allow_redirects=False) as resp:
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
                return resp.status, text, parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
        except TimeoutError:
            timeout = self.config.request_timeout_secs
            failure = SinkError(f"{self._name}: POST timed out after {timeout:g}s", retriable=True)
        except (aiohttp.ClientError, OSError, ValueError) as err:
            cause = transport_cause(err, self._url)  # the host and port only: the path is the secret
            failure = SinkError(f"{self._name}: POST failed: {cause} ({type(err).__name__})", retriable=True)
        # Raised outside the except block: aiohttp's error (which may hold the URL) is not chained.
        raise failure

    # ------------------------------------------------------------------ protocol
    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Post each record, one per ``min_interval_secs``.

        Raises:
            BackpressureError: Slack answered 429 (``retry_after`` = its Retry-After).
            SinkError: 5xx or a transport error (retriable); a redirect, or 403/404/410 (the
                webhook is revoked or its channel gone), not retriable.
        """
        result = SendResult()
        for d in batch:
            if d.id in self._sent:
                result.duplicates += 1
                continue
            try:
                payload = orjson.dumps(self.message(d))
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                result.failures.append(Failure(d, f"{self._name}: cannot build the message ({err})", retriable=False))
                continue
            await self._pace()
            status, text, retry_after = await self._post(payload)
            if 200 <= status < 300:
                self._remember(d.id)
                self.posted += 1
            elif status == 429:
                wait = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_SECS
                self._defer(wait)
                raise BackpressureError(f"{self._name}: rate limited by Slack (HTTP 429)", retry_after=wait)
            elif status >= 500 or status == 408:
                reason = f"{self._name}: HTTP {status} {self._clean(text)}"
                raise SinkError(reason, retriable=True, retry_after=retry_after)
            elif 300 <= status < 400:
                raise SinkError(f"{self._name}: unexpected redirect (HTTP {status}); check webhook_url")
            elif status in ENDPOINT_ERRORS or (status == 400 and text.strip() in ENDPOINT_400_ERRORS):
                # the webhook itself is revoked, disabled or its channel gone: every record would fail
                # the same way, so nothing is dead-lettered and the runner's circuit opens instead
                raise SinkError(f"{self._name}: Slack refused the webhook: HTTP {status} {self._clean(text)}")
            else:
                reason = f"{self._name}: Slack refused the message: HTTP {status} {self._clean(text)}"
                result.failures.append(Failure(d, reason, retriable=False))
        return result

    async def healthcheck(self) -> None:
        """Post ``{}``: a live webhook answers 400 ``no_text``/``invalid_payload`` and posts nothing.

        Raises:
            SinkError: unreachable (retriable), or the webhook is revoked/invalid (not retriable).
        """
        opened = self._session is None
        if opened:
            await self.__aenter__()
        try:
            status, text, _ = await self._post(b"{}")
        finally:
            if opened:
                await self.__aexit__(None, None, None)
        if status == 400 and any(w in text for w in ("no_text", "invalid_payload", "missing_text")):
            return
        if 200 <= status < 300:
            return
        raise SinkError(
            f"{self._name}: webhook check failed: HTTP {status} {self._clean(text)}",
            retriable=status >= 500 or status == 429,
        )
