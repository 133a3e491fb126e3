"""Canary: the webhook secret never appears in a log record, a response, an exception or the bus."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from pipeline.bus.sqlite import SqliteBus
from pipeline.config.base import EnvValue
from pipeline.errors import ConfigError, WebhookRejected
from pipeline.observability.logs import JsonFormatter
from pipeline.sources.webhook.config import parse_webhook_config
from pipeline.sources.webhook.receiver import WebhookReceiver
from tests.unit.test_webhook_support import (
    JSON,
    SECRET_A,
    SECRET_B,
    WS,
    FlakyBus,
    delivery,
    hdrs,
    letters_of,
    make_config,
    serve,
)

PATH = "/hooks/crm"


async def test_secret_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Accepted, duplicate, rejected (every kind), bus-down and rotated requests leak neither secret."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    responses: list[str] = []
    async with SqliteBus(tmp_path / "bus.db") as bus:
        flaky = FlakyBus(bus)
        r = WebhookReceiver(make_config((SECRET_A, SECRET_B)), flaky)  # type: ignore[arg-type]
        original = r._reject

        def spy(request: Any, src: Any, rej: WebhookRejected) -> Any:
            seen.append(f"{rej!r} {rej} {rej.reason} {rej.args}")
            return original(request, src, rej)

        r._reject = spy  # type: ignore[method-assign]
        dup: CIMultiDict[str] = CIMultiDict(JSON)
        dup.add("X-Webhook-Secret", SECRET_A)
        dup.add("X-Webhook-Secret", SECRET_A[:-1])
        requests: list[tuple[str, dict[str, Any] | CIMultiDict[str], bytes]] = [
            (PATH, hdrs(SECRET_A), delivery(1)),
            (PATH, hdrs(SECRET_A), delivery(1)),
            (PATH, hdrs(SECRET_B), delivery(2)),
            (PATH, hdrs(SECRET_A[:-1]), delivery(3)),
            (PATH, hdrs(SECRET_A + "0"), delivery(3)),
            (PATH, hdrs(SECRET_A[5:]), delivery(3)),
            (PATH, dup, delivery(3)),
            (f"{PATH}?secret={SECRET_A}", dict(JSON), delivery(3)),
            (f"/nowhere?secret={SECRET_A}", hdrs(SECRET_A), delivery(3)),
            (PATH, {"Content-Type": "text/plain", "X-Webhook-Secret": SECRET_A[1:]}, delivery(3)),
            (
                PATH,
                {"Content-Type": "application/json", "Content-Encoding": "gzip", "X-Webhook-Secret": SECRET_A},
                delivery(3),
            ),
            (PATH, hdrs(SECRET_A), b"{broken " + SECRET_A.encode()),
            (PATH, hdrs(SECRET_A), delivery(4, workspace="other")),
        ]
        async with serve(r) as c:
            for path, headers, body in requests:
                resp = await c.post(path, data=body, headers=headers)
                responses.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")
            flaky.down = True
            resp = await c.post(PATH, data=delivery(9), headers=hdrs(SECRET_A))
            assert resp.status == 503
            responses.append(f"{dict(resp.headers)} {await resp.text()}")
            responses.append(await (await c.get("/readyz")).text())
            flaky.down = False
            r.rotate("crm", [SecretStr(SECRET_B)])
            resp = await c.post(PATH, data=delivery(10), headers=hdrs(SECRET_A))
            responses.append(f"{resp.status} {await resp.text()}")
        letters = await letters_of(bus)  # the broken body (holding secret A) and the other workspace's
        stored = [rec.value for rec in await _all(bus)] + list((await bus.state_items()).values())
        stored += [orjson.dumps(letter) for letter in letters]
    assert r.accepted == 2 and len(seen) >= 8 and len(letters) == 2
    fmt = JsonFormatter()
    logged = [f"{rec.getMessage()} {rec.__dict__} {fmt.format(rec)}" for rec in caplog.records]
    for secret in (SECRET_A, SECRET_B):
        for where, texts in (("log", logged), ("response", responses), ("exception", seen)):
            assert not [t for t in texts if secret in t], f"secret leaked into a {where}"
        assert not [v for v in stored if secret.encode() in v], "secret leaked into the bus"
    assert not [t for t in logged if "secret=" in t]


async def _all(bus: SqliteBus) -> list[Any]:
    from tests.unit.test_webhook_support import events_of

    return await events_of(bus, WS)


def test_config_errors_do_not_echo_secrets() -> None:
    """Invalid secrets (too short, non-ASCII, duplicated across sources) are refused without quoting them."""
    bad = "tiny-" + SECRET_A[:6]
    for secrets in ([EnvValue(bad)], [EnvValue(SECRET_A + "\u00e9")], [EnvValue(SECRET_A), EnvValue(SECRET_A)]):
        with pytest.raises(ConfigError) as info:
            parse_webhook_config({"sources": {"crm": {"workspace_id": WS, "secrets": secrets}}})
        assert SECRET_A not in str(info.value) and bad not in str(info.value)
