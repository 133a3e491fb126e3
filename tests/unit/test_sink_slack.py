"""Slack sink against the fake incoming webhook: messages, ≤ 1/s pacing, 429 Retry-After, errors, no URL leaks."""

from __future__ import annotations

import itertools
import logging
import re
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectors.slack import SlackSink, SlackSinkConfig, alert_message, mrkdwn
from pipeline.bus.base import ALERTS_TOPIC, EVENTS_TOPIC, Record
from pipeline.bus.sqlite import SqliteBus
from pipeline.config.base import EnvValue, validate_block
from pipeline.config.loader import parse_config
from pipeline.delivery.base import Delivery, Sink
from pipeline.delivery.registry import register_sink, sink_class, unregister_sink
from pipeline.delivery.runner import SinkRunner, decode
from pipeline.errors import BackpressureError, ConfigError, SinkError
from schemas import Entity
from tests.fakes import FakeSleep, publish
from tests.fakes.slack import FakeSlack
from tests.unit.test_formats_native import sample_alert, sample_events

CANARY_PATH = "/services/TCANARY01/BCANARY02/slackCanaryToken0123456789"
REAL_SHAPED_URL = "https://hooks.slack.com/services/T0000CANA/B0000CANA/slackCanary0123456789abc"  # 77 chars


def alert_delivery(i: int = 0, **over: Any) -> Delivery:
    d = decode(Record(ALERTS_TOPIC, 0, i, 0, b"ws", sample_alert(dedup_key=f"k-{i}", **over).to_json()))
    assert not isinstance(d, str)
    return d


def slack_cfg(url: str, **kw: Any) -> SlackSinkConfig:
    return SlackSinkConfig.model_validate({"type": "slack", "webhook_url": EnvValue(url), **kw})


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    async with server:
        yield server


def test_is_a_sink_subscribed_to_alerts() -> None:
    """SlackSink satisfies the Sink protocol and subscribes to alerts only by default."""
    cfg = slack_cfg("https://hooks.slack.com/services/T/B/X")
    assert isinstance(SlackSink("s", cfg), Sink)
    assert cfg.topics == ["alerts"]
    assert "hooks.slack.com" not in repr(cfg) and "hooks.slack.com" not in str(cfg.model_dump())


async def test_alert_message_is_readable(slack: FakeSlack) -> None:
    """An alert becomes a Block Kit message: emoji + severity + title, summary, workspace, entities, runbook link."""
    async with SlackSink("s", slack_cfg(slack.hook_url, min_interval_secs=0.01)) as sink:
        assert (await sink.send([alert_delivery()])).ok
    (msg,) = slack.posted
    blocks = msg["blocks"]
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["text"] == "🔴 Critical: API key with all:all scope"
    assert "rotate = now" in blocks[1]["text"]["text"]
    fields = " ".join(f["text"] for f in blocks[2]["fields"])
    assert "*Workspace*" in fields and "Acme | Growth" in fields and "`api_key.all_scope` v2" in fields
    assert "• api_key: CRM sync" in blocks[3]["text"]["text"]
    context = " ".join(e["text"] for e in blocks[4]["elements"])
    assert "<https://runbooks.example.com/api-key-all-scope|open the runbook>" in context
    assert "T1098" in context
    assert msg["text"].startswith("🔴 [CRITICAL]")
    assert msg["unfurl_links"] is False


def test_resolved_and_plain_text_runbook() -> None:
    """A resolved alert shows ✅ Resolved; a runbook that is not a URL is shown as escaped text."""
    alert = sample_alert(status="resolved").to_dict()
    alert["rule"]["runbook"] = "Delete the key <now>"
    msg = alert_message(alert)
    assert msg["blocks"][0]["text"]["text"].startswith("✅ Resolved:")
    assert "Runbook: Delete the key &lt;now&gt;" in str(msg["blocks"][-1])


async def test_untrusted_text_cannot_ping_or_link(slack: FakeSlack) -> None:
    """Names and summaries from Instantly are escaped: no <!channel>, no injected links, long text cut."""
    evil = "<!channel> <https://evil.example|click> & " + "x" * 5000
    d = alert_delivery(summary=evil, entities=(Entity("member", "m1", "<!here>"),))
    async with SlackSink("s", slack_cfg(slack.hook_url, min_interval_secs=0.01)) as sink:
        assert (await sink.send([d])).ok
    raw = slack.received[0].body.decode()
    assert "<!channel>" not in raw and "<!here>" not in raw and "<https://evil" not in raw
    assert "&lt;!channel&gt;" in raw and "&amp;" in raw
    assert len(slack.posted[0]["blocks"][1]["text"]["text"]) <= 3000


async def test_events_get_a_compact_message(slack: FakeSlack) -> None:
    """When subscribed to events, each event is posted with its label, actor and target."""
    d = decode(Record(EVENTS_TOPIC, 0, 0, 0, b"ws", sample_events()["member_removed"].to_json()))
    assert not isinstance(d, str)
    async with SlackSink("s", slack_cfg(slack.hook_url, topics=["events"], min_interval_secs=0.01)) as sink:
        assert (await sink.send([d])).ok
    (msg,) = slack.posted
    assert msg["blocks"][0]["text"]["text"] == "\u2139\ufe0f Member removed"
    assert "mallory@example.com" in str(msg["blocks"][1])


async def test_at_most_one_message_per_second(slack: FakeSlack) -> None:
    """With the default pacing, posts arrive at least ~1 s apart and Slack never rate-limits them."""
    slack.rate_limit_secs = 0.95
    async with SlackSink("s", slack_cfg(slack.hook_url)) as sink:
        result = await sink.send([alert_delivery(i) for i in range(3)])
    assert result.ok
    times = [r.at for r in slack.received]
    assert [r.status for r in slack.received] == [200, 200, 200]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(times))


async def test_429_retry_after_is_honoured(slack: FakeSlack) -> None:
    """A 429 raises BackpressureError(retry_after); an early retry still waits until Retry-After elapsed."""
    slack.script = [(200, "ok", None), (429, "rate_limited", 1.0)]
    items = [alert_delivery(i) for i in range(3)]
    async with SlackSink("s", slack_cfg(slack.hook_url, min_interval_secs=0.01)) as sink:
        with pytest.raises(BackpressureError) as err:
            await sink.send(items)
        assert err.value.retriable and err.value.retry_after == 1.0
        result = await sink.send(items)  # the runner retries the batch (here: immediately)
    assert result.ok and result.duplicates == 1, "the already-posted alert is not posted again"
    statuses = [r.status for r in slack.received]
    assert statuses == [200, 429, 200, 200]
    assert slack.received[2].at - slack.received[1].at >= 0.95
    assert [m["blocks"][1]["text"]["text"] for m in slack.posted] == [
        m["blocks"][1]["text"]["text"] for m in (alert_message(d.body) for d in items)
    ]


async def test_wrong_webhook_path_is_no_service(slack: FakeSlack) -> None:
    """A revoked/unknown webhook answers 404 no_service: the batch fails for good (circuit), nothing dead-lettered."""
    async with SlackSink("s", slack_cfg(slack.url + "/services/T/B/revoked", min_interval_secs=0.01)) as sink:
        with pytest.raises(SinkError, match="no_service") as err:
            await sink.send([alert_delivery(0), alert_delivery(1)])
    assert not err.value.retriable
    assert len(slack.received) == 1, "the second alert is not posted to a dead webhook"


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (403, "action_prohibited"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (403, "invalid_token"),
        (400, "user_not_found"),  # the user a DM webhook posts to is gone: no message can pass
        (400, "no_service_id"),  # the webhook URL lacks its service id
    ],
)
async def test_webhook_level_errors_open_the_circuit(slack: FakeSlack, status: int, text: str) -> None:
    """Slack's answers about the webhook (403/404/410, 400 user_not_found/no_service_id): a non-retriable error.

    Raised after the alerts already posted, which are not posted again.
    """
    slack.script = [(200, "ok", None), (status, text, None)]
    items = [alert_delivery(i) for i in range(3)]
    async with SlackSink("s", slack_cfg(slack.hook_url, min_interval_secs=0.01)) as sink:
        with pytest.raises(SinkError, match=text) as err:
            await sink.send(items)
        assert not err.value.retriable
        assert (await sink.send(items)).duplicates == 1, "the alert Slack accepted is not posted again"
    assert [r.status for r in slack.received] == [200, status, 200, 200]


async def test_bad_message_is_dead_lettered(slack: FakeSlack) -> None:
    """400 invalid_payload is about that message: it is a dead letter and the rest of the batch goes on."""
    slack.script = [(400, "invalid_payload", None)]
    async with SlackSink("s", slack_cfg(slack.hook_url, min_interval_secs=0.01)) as sink:
        result = await sink.send([alert_delivery(0), alert_delivery(1)])
    assert [f.retriable for f in result.failures] == [False] and "invalid_payload" in result.failures[0].error
    assert len(slack.posted) == 1


def test_cut_text_never_ends_in_half_an_entity() -> None:
    """Escaped text cut at a limit does not end in a broken entity such as ``&am`` (Slack shows it raw)."""
    for pad in range(6):
        text = mrkdwn("x" * pad + "&" * 10, 8)
        assert len(text) <= 8 and text.endswith("…")
        body = text[:-1]
        assert body.replace("&amp;", "").count("&") == 0, text
    entity_heavy = {"summary": "<" * 2000, "entities": [{"kind": "member", "id": "m", "name": "&" * 900}] * 5}
    for block in alert_message(entity_heavy)["blocks"]:
        texts = [block.get("text") or {}, *(block.get("fields") or []), *(block.get("elements") or [])]
        for t in texts:
            if t.get("type") == "mrkdwn":
                assert not re.search(r"&(?:a|am|amp|l|lt|g|gt)?…", t["text"]), t["text"][-20:]


def test_runbook_link_escapes_ampersands() -> None:
    """A runbook URL with a query string is a link whose ``&`` is escaped, as Slack requires in mrkdwn."""
    alert = sample_alert().to_dict()
    alert["rule"]["runbook"] = "https://wiki.example.com/view?page=1&section=keys"
    context = str(alert_message(alert)["blocks"][-1])
    assert "<https://wiki.example.com/view?page=1&amp;section=keys|open the runbook>" in context


async def test_healthcheck(slack: FakeSlack) -> None:
    """A live webhook passes (Slack answers no_text to {} and posts nothing); a revoked one fails for good."""
    await SlackSink("s", slack_cfg(slack.hook_url)).healthcheck()
    assert slack.posted == []
    with pytest.raises(SinkError, match="no_service") as err:
        await SlackSink("s", slack_cfg(slack.url + "/services/T/B/gone")).healthcheck()
    assert not err.value.retriable


def _texts(exc: BaseException) -> str:
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), *traceback.format_exception(e)]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


async def test_canary_webhook_url_never_leaks(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    """The webhook URL (a canary token) appears in no log line, no error text and no dead-letter reason."""
    caplog.set_level(logging.DEBUG)
    slack.path = CANARY_PATH
    url = slack.url + CANARY_PATH
    texts: list[str] = []
    slack.script = [(400, f"invalid_payload {url}", None), (429, "rate_limited", 0.01), (500, CANARY_PATH, None)]
    async with SlackSink("s", slack_cfg(url, min_interval_secs=0.01)) as sink:
        result = await sink.send([alert_delivery(1)])
        texts += [f.error for f in result.failures]
        for _ in range(2):
            try:
                await sink.send([alert_delivery(2)])
            except SinkError as err:
                texts.append(_texts(err))
        await sink.healthcheck()
    for bad in ("http://127.0.0.1:1" + CANARY_PATH, "not a url" + CANARY_PATH):
        try:
            await SlackSink("s", slack_cfg(bad, min_interval_secs=0.01)).healthcheck()
        except (SinkError, ValueError) as err:
            texts.append(_texts(err))
    try:
        validate_block(SlackSinkConfig, {"type": "slack", "webhook_url": EnvValue("ftp://x" + CANARY_PATH)}, "sinks.s")
    except ConfigError as err:
        texts.append(_texts(err))
    assert len(texts) >= 6
    token = CANARY_PATH.rsplit("/", 1)[1]
    for text in [*texts, caplog.text]:
        assert token not in text and "slackCanary" not in text


async def test_an_unreachable_webhook_url_names_the_host_and_cause_never_the_path() -> None:
    """Slack's transport error said ``POST failed (ClientConnectorError)``; it names the host and
    what went wrong, and still never the URL's path (the secret)."""
    sink = SlackSink("s", slack_cfg("http://127.0.0.1:1" + CANARY_PATH, min_interval_secs=0.01))
    with pytest.raises(SinkError) as info:
        await sink.healthcheck()
    text = _texts(info.value)
    assert "127.0.0.1:1 refused the connection" in str(info.value)
    assert "TCANARY01" not in text and "slackCanaryToken" not in text


def test_literal_webhook_url_in_config_is_not_echoed() -> None:
    """A webhook URL written literally in the config is refused without repeating it in the error."""
    with pytest.raises(ConfigError) as err:
        validate_block(SlackSinkConfig, {"type": "slack", "webhook_url": REAL_SHAPED_URL}, "s")
    assert "slackCanary" not in str(err.value)


async def test_through_the_runner_429_then_every_alert_once(slack: FakeSlack, tmp_path: Path) -> None:
    """Via the sink runner and a real bus: after a 429 the batch is retried, nothing is posted twice or early."""
    slack.script = [(200, "ok", None), (429, "rate_limited", 0.3)]
    alerts = [sample_alert(dedup_key=f"k{i}") for i in range(3)]
    async with SqliteBus(tmp_path / "bus.db") as bus:
        await publish(bus, alerts)
        cfg = slack_cfg(slack.hook_url, min_interval_secs=0.01, retry_initial_secs=0.01)
        stats = await SinkRunner(bus, SlackSink("s", cfg), cfg, sleep=FakeSleep()).run_once()
    assert (stats.delivered, stats.duplicates, stats.retries) == (2, 1, 1), "the 1st alert counted once, as a re-skip"
    assert [r.status for r in slack.received] == [200, 429, 200, 200]
    assert slack.received[2].at - slack.received[1].at >= 0.28
    posted_ids = [m["blocks"][-1]["elements"][-1]["text"] for m in slack.posted]
    assert len(set(posted_ids)) == 3


def test_yaml_config_example(tmp_path: Path) -> None:
    """The documented YAML example validates through the registry, reading the URL from a file."""
    (tmp_path / "slack_url").write_text("https://hooks.slack.com/services/T000/B000/XXXX\n")
    text = """
sinks:
  secops-slack:
    type: slack
    webhook_url_file: slack_url
    min_severity: medium
"""
    config = parse_config(text, env={}, base_dir=tmp_path)
    register_sink("slack", SlackSink)
    try:
        sink_cfg = config.sinks["secops-slack"]
        cls = sink_class(sink_cfg.type)
    finally:
        unregister_sink("slack")
    assert cls is SlackSink
    assert isinstance(sink_cfg, SlackSinkConfig)
    assert sink_cfg.topics == ["alerts"] and sink_cfg.min_interval_secs == 1.0


def test_a_bad_webhook_url_error_reads_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error's example survives the output redaction (it read 'https://hooks.slack.com/sha256:6e26df2e')."""
    from pipeline.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text('sinks:\n  sl: {type: slack, webhook_url: "${SLACK_URL_UNDER_TEST}"}\n')
    monkeypatch.setenv("SLACK_URL_UNDER_TEST", "not-a-url")
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "sinks.sl.webhook_url: must be the https URL of a Slack incoming webhook" in err
    assert "(host hooks.slack.com, path /services/…)" in err and "sha256" not in err
