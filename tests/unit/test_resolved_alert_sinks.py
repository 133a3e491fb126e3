"""A resolved alert, as the engine raises it, reaches every format and alert channel naming what cleared.

The alert comes from the real engine (``auth.mfa_disabled``: TOTP disabled by Ann, re-enabled from an
IP she signed in from before), so the test covers the whole way: the engine keeps the condition's
entities, and each receiver shows them on the close — OCSF Detection Finding ``Close`` with its
resources, ECS ``related.*``, Splunk CIM ``user``/``src``, CEF ``cs6``, a Slack message whose
notification text says "RESOLVED" and whom, and a PagerDuty Events v2 ``resolve`` for the trigger's
dedup key (all Events v2 needs on a resolve: ``routing_key``, ``event_action``, ``dedup_key``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.pagerduty import PagerDutySink, PagerDutySinkConfig
from connectors.slack import SlackSink, SlackSinkConfig
from pipeline.bus.base import ALERTS_TOPIC, Record
from pipeline.clock import FakeClock, parse_time
from pipeline.config.base import EnvValue
from pipeline.delivery.base import Delivery
from pipeline.delivery.runner import decode
from pipeline.formats import render
from pipeline.rules.engine import RulesEngine
from pipeline.rules.testing import make_event
from schemas.alert import Alert
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.unit.test_formats_ecs_schema import ecs_problems
from tests.unit.test_formats_ocsf import ocsf_errors

T0 = parse_time("2026-01-03T09:00:00Z")
KEY = "R0UTINGKEYCANARY0123456789abcdef"
ANN = {"user_id": "u1", "user_name": "Ann", "ip": "198.51.100.7"}


def mfa_alerts() -> tuple[Alert, Alert]:
    """(open, resolved) of auth.mfa_disabled, raised by the engine."""
    e = RulesEngine.from_config({}, clock=FakeClock(T0))
    e.evaluate([make_event("audit.user_login", time=T0 - 2 * 86_400, actor=ANN)])
    [opened] = [a for a in e.evaluate([make_event("audit.mfa_totp_disabled", time=T0, actor=ANN)]).alerts
                if a.rule.id == "auth.mfa_disabled"]  # fmt: skip
    enabled = make_event("audit.mfa_totp_enabled", time=T0 + 300, actor=ANN)
    [res] = [a for a in e.evaluate([enabled]).alerts if a.rule.id == "auth.mfa_disabled"]
    assert (opened.status, res.status) == ("open", "resolved")
    return opened, res


def delivery(alert: Alert, offset: int = 0) -> Delivery:
    d = decode(Record(ALERTS_TOPIC, 0, offset, 0, b"ws-1", alert.to_json()))
    assert not isinstance(d, str)
    return d


def test_every_format_names_the_user_and_ip_on_the_close() -> None:
    """OCSF, ECS, Splunk and CEF renderings of the resolved alert carry its user and IP."""
    _, res = mfa_alerts()
    body = res.to_dict()
    ocsf = render(body, "ocsf")
    assert isinstance(ocsf, dict)
    assert (ocsf["activity_id"], ocsf["status_id"], ocsf["status"]) == (3, 4, "Resolved")
    assert {"type": "user", "uid": "u1", "name": "Ann"} in ocsf["resources"]
    assert {"type": "ip", "uid": "198.51.100.7"} in ocsf["resources"]
    assert "it closes: MFA (TOTP) was disabled for Ann" in ocsf["message"]
    assert ocsf_errors(ocsf) == []
    ecs = render(body, "ecs")
    assert isinstance(ecs, dict)
    assert ecs["event"]["action"] == "alert-resolved"
    assert ecs["related"] == {"user": ["Ann"], "ip": ["198.51.100.7"]}
    assert ecs_problems(ecs) == []
    splunk = render(body, "splunk")
    assert isinstance(splunk, dict)
    assert (splunk["status"], splunk["user"], splunk["src"]) == ("resolved", "Ann", "198.51.100.7")
    cef = render(body, "cef")
    assert isinstance(cef, str)
    assert "act=resolved" in cef and "cs6=user:u1:Ann; ip:198.51.100.7:" in cef


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    server = FakeSlack()
    async with server:
        yield server


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    server = FakePagerDuty(KEY)
    async with server:
        yield server


async def test_slack_says_resolved_and_whom(slack: FakeSlack) -> None:
    """The notification text (all a phone shows) says RESOLVED and names the user; the blocks list the entities."""
    opened, res = mfa_alerts()
    cfg = SlackSinkConfig.model_validate({"type": "slack", "webhook_url": EnvValue(slack.hook_url),
                                          "min_interval_secs": 0.01})  # fmt: skip
    async with SlackSink("s", cfg) as sink:
        assert (await sink.send([delivery(opened, 0), delivery(res, 1)])).ok
    first, last = slack.posted
    assert first["text"].startswith("🟠 [HIGH] MFA (TOTP) disabled") and "user: Ann" in first["text"]
    assert last["text"].startswith("✅ [RESOLVED] MFA (TOTP) disabled") and "user: Ann" in last["text"]
    assert "[HIGH]" not in last["text"]
    text = " ".join(str(b) for b in last["blocks"])
    assert "• user: Ann (`u1`)" in text and "• ip: 198.51.100.7" in text
    assert "it closes: MFA (TOTP) was disabled for Ann" in text


async def test_pagerduty_resolves_the_triggered_alert(pd: FakePagerDuty) -> None:
    """Trigger then resolve by the same dedup key; the resolve carries what Events v2 reads on a resolve."""
    opened, res = mfa_alerts()
    cfg = PagerDutySinkConfig.model_validate({"type": "pagerduty", "url": pd.url, "routing_key": EnvValue(KEY)})
    async with PagerDutySink("pd", cfg) as sink:
        assert (await sink.send([delivery(opened, 0)])).ok
        assert (await sink.send([delivery(res, 1)])).ok
    trigger, resolve = pd.accepted
    assert trigger["event_action"] == "trigger" and trigger["payload"]["component"] == "user:Ann"
    expected: dict[str, Any] = {"routing_key": KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]}
    assert resolve == expected
