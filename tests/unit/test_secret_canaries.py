"""Canaries seeded into every surface the reviewer found leaking: none may come out.

Each test registers (or configures) a canary secret, drives the surface that used to echo it,
and asserts the canary is absent from everything captured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from pipeline.cli.main import main
from pipeline.clock import FakeClock
from pipeline.config.base import EnvValue
from pipeline.delivery.registry import build_sink
from pipeline.errors import PipelineError
from pipeline.observability.health import HealthRegistry
from pipeline.observability.logs import redact_text as log_redact_text
from pipeline.redaction.registry import register_secret
from pipeline.redaction.text import redact_text
from tests.unit.test_sink_splunk_hec import ev

pytestmark = pytest.mark.usefixtures("clean_secret_registry")


def test_readyz_reasons_lose_sink_tokens_and_the_instantly_key() -> None:
    register_secret("CANARY-hectok-BBB222")
    register_secret("MDE5YTRhNGEtMTExMS03MjIyLTgzMzMtOTQ0NDQ0NDQ0NDQ0OkNBTkFSWXRva1BhcnQ5OQ==")
    clock = FakeClock()
    h = HealthRegistry(clock)
    h.circuit("hec401", "open", reason="splunk_hec hec401: HTTP 401 (upstream error for [Splunk CANARY-hectok-BBB222])")
    h.watch_stream("enc", "audit_logs", stale_after_secs=1)
    h.stream_error(
        "enc",
        "audit_logs",
        "ScopeError: HTTP 403 (key MDE5YTRhNGEtMTExMS03MjIyLTgzMzMtOTQ0NDQ0NDQ0NDQ0OkNBTkFSWXRva1BhcnQ5OQ%3D%3D)",
    )
    h.bus_error(RuntimeError("auth failed: token=CANARY-bus-tok-1"))
    h.set_check("webhook", False, "bind failed for Bearer CANARY-custom-99")
    clock.advance(5)
    body = json.dumps(h.report().to_dict())
    assert "CANARY" not in body
    assert "circuit open" in body and "ScopeError" in body


class EchoServer:
    """A destination on loopback, on its own thread, that answers every request with ``status`` and
    a body echoing the ``Authorization`` header (plain text, or HEC/ES-shaped JSON)."""

    def __init__(self, status: int, shape: str = "text", handler: Any = None) -> None:
        self.status, self.shape, self.handler = status, shape, handler
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def _handle(self, req: web.Request) -> web.Response:
        await req.read()
        auth = req.headers.get("Authorization", "")
        token = auth.split(" ", 1)[-1]
        if self.shape == "json":
            doc = {"text": f"denied token={token} ({auth})", "code": 4,
                   "error": {"type": "security_exception", "reason": f"denied {auth}"}}  # fmt: skip
            return web.json_response(doc, status=self.status)
        return web.Response(text=f"Cannot {req.method} {req.path_qs} denied token={token} [{auth}]", status=self.status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handler or self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> EchoServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await asyncio.sleep(0.05)  # closed connections finish closing before the loop stops

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


HEC_TOKEN = "CANARY-hectok-BBB222"
ES_KEY = "CANARY-eskey-CCC333"
ES_PASSWORD = "CANARY-espw-DDD444"


def sink_config(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C_HEC", HEC_TOKEN)
    monkeypatch.setenv("C_ES", ES_KEY)
    monkeypatch.setenv("C_ESPW", ES_PASSWORD)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"bus: {{type: sqlite, path: {tmp_path}/bus.db}}\n"
        "sinks:\n"
        f"  hec: {{type: splunk_hec, url: '{url}', token: '${{C_HEC}}'}}\n"
        f"  es: {{type: elasticsearch, url: '{url}', api_key: '${{C_ES}}'}}\n"
        f"  es2: {{type: elasticsearch, url: '{url}', username: elastic, password: '${{C_ESPW}}'}}\n"
    )
    return path


def _canaries() -> list[str]:
    basic = base64.b64encode(f"elastic:{ES_PASSWORD}".encode()).decode()
    return ["CANARY", basic, base64.b64encode(ES_KEY.encode()).decode()]


@pytest.mark.parametrize("shape", ["text", "json"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_sinks_output_loses_echoed_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shape: str, fmt: str
) -> None:
    with EchoServer(401, shape) as srv:
        cfg = sink_config(tmp_path, srv.url, monkeypatch)
        code = main(["config", "validate", str(cfg), "--check-sinks", "--format", fmt])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "hec" in out + err and "es2" in out + err
    for canary in _canaries():
        assert canary not in out + err


@pytest.mark.parametrize("shape", ["text", "json"])
def test_sinks_setup_es_output_loses_echoed_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    with EchoServer(403, shape) as srv:
        cfg = sink_config(tmp_path, srv.url, monkeypatch)
        for sink in ("es", "es2"):
            assert main(["sinks", "setup", sink, "--config", str(cfg)]) != 0
    out, err = capsys.readouterr()
    assert "HTTP 403" in err
    for canary in _canaries():
        assert canary not in out + err


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_hec_and_es_failures_lose_echoed_credentials(tmp_path: Path, status: int) -> None:
    """What a failed delivery says (the run log, the dead letter, replay's output) quotes no credential."""
    with EchoServer(status, "json") as srv:
        for sink_id, scfg in (
            ("hec", {"type": "splunk_hec", "url": srv.url, "token": EnvValue(HEC_TOKEN)}),
            ("es", {"type": "elasticsearch", "url": srv.url, "api_key": EnvValue(ES_KEY), "check_setup": False}),
        ):
            sink = build_sink(sink_id, scfg)
            said: list[str] = []
            async with sink:
                try:
                    result = await sink.send([ev(1)])
                    said += [f.error for f in result.failures]
                except PipelineError as err:
                    said.append(str(err))
            assert said
            for text in said:
                assert "CANARY" not in text, text


KEY_UUID = "019a4a4a-1111-7222-8333-944444444444"
KEY_TOKEN = "CANARYtokPart99"
INSTANTLY_KEY = base64.b64encode(f"{KEY_UUID}:{KEY_TOKEN}".encode()).decode()


def key_forms() -> dict[str, str]:
    """How a server may echo the key: raw, URL-encoded, decoded, its token part alone."""
    return {
        "raw": INSTANTLY_KEY,
        "quoted": quote(INSTANTLY_KEY, safe=""),
        "decoded": f"{KEY_UUID}:{KEY_TOKEN}",
        "token": KEY_TOKEN,
    }


@pytest.mark.parametrize("form", ["raw", "quoted", "decoded", "token"])
def test_registered_instantly_key_is_redacted_in_every_form(form: str) -> None:
    import connectors.instantly.key_shape  # noqa: F401 - the connector teaches the runtime its key

    register_secret(INSTANTLY_KEY)
    text = f"Insufficient scope for key {key_forms()[form]} on GET /api/v2/audit-logs"
    assert "CANARY" not in redact_text(text)
    assert "CANARY" not in log_redact_text(text)
    assert KEY_UUID not in INSTANTLY_KEY  # the key id alone is no secret (kept readable)


def test_decoded_key_does_not_pass_the_publish_gate() -> None:
    """``pipeline.audit_log_unavailable`` quotes the server message: the gate removes the decoded key."""
    from connectors.instantly.normalize import pipeline_event
    from pipeline.redaction.gate import encode_event
    from schemas.event import WorkspaceRef

    register_secret(INSTANTLY_KEY)
    for form in key_forms().values():
        event = pipeline_event(
            type="pipeline.audit_log_unavailable",
            workspace=WorkspaceRef("ws-1", None),
            observed_at="2026-01-01T00:00:00.000Z",
            stream="audit_logs",
            natural_key=(403, 0),
            attributes={"stream": "audit_logs", "status": 403, "message": f"Forbidden: key {form} rejected"},
        )
        assert b"CANARY" not in encode_event(event)


def test_secret_with_a_trailing_newline_is_redacted_escaped_and_stripped() -> None:
    register_secret("CANARY-nl-secret-77\n")
    for text in ("value 'CANARY-nl-secret-77\\n' refused", "value CANARY-nl-secret-77 refused"):
        assert "CANARY" not in redact_text(text)


async def _instantly_echo(req: web.Request) -> web.Response:
    """A fake Instantly API: the workspace answers; every other path refuses, echoing the key in some form."""
    await req.read()
    key = req.headers.get("Authorization", "").split(" ", 1)[-1]
    decoded = base64.b64decode(key).decode()
    if req.path.endswith("workspaces/current"):
        return web.json_response({"id": "019a457d-eaaf-73ad-b6fe-f2ea659d5203", "name": "Acme"})
    if "audit" in req.path:
        msg = f"key {decoded} rejected"
    elif "api-keys" in req.path:
        msg = f"token part {decoded.split(':')[-1]} invalid"
    else:
        msg = f"key {quote(key, safe='')} invalid"
    return web.json_response({"statusCode": 403, "error": "Forbidden", "message": msg}, status=403)


def instantly_config(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C_IK", INSTANTLY_KEY)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"bus: {{type: sqlite, path: {tmp_path}/bus.db}}\n"
        f"workspaces:\n  acme: {{base_url: '{url}', api_key: '${{C_IK}}', max_retries: 0}}\n"
        "service: {enabled: false}\n"
    )
    return path


@pytest.mark.parametrize(
    "argv",
    [["check", "--format", "json"], ["check"], ["webhooks", "check"], ["webhooks", "check", "--format", "json"]],
)
def test_check_commands_lose_every_form_of_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with EchoServer(403, handler=_instantly_echo) as srv:
        cfg = instantly_config(tmp_path, srv.url, monkeypatch)
        main([*argv, "--config", str(cfg)])
    out, err = capsys.readouterr()
    assert "403" in out + err or "Forbidden" in out + err, (out, err)
    assert "CANARY" not in out + err


def _config_error(text: str, env: dict[str, str]) -> str:
    from pipeline.config.loader import parse_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env)
    return str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://u:CANARY-otlp-pw@127.0.0.1:1/x",
        "http://127.0.0.1:1/CANARY-path?code=CANARY-q",
        "http://127.0.0.1:1/x#CANARY-frag",
        "http://127.0.0.1:CANARY/x",
    ],
)
def test_otlp_endpoint_refuses_userinfo_query_fragment_without_echo(endpoint: str) -> None:
    text = f"telemetry:\n  otlp:\n    endpoint: '{endpoint}'\n"
    msg = _config_error(text, {})
    assert "telemetry.otlp.endpoint" in msg
    assert "CANARY" not in msg


@pytest.mark.parametrize(
    "base_url",
    ["http://u:CANARY-pw@127.0.0.1:1", "https://api.instantly.ai/?token=CANARY-q", "https://h.example/#CANARY"],
)
def test_instantly_base_url_refuses_userinfo_and_query_in_one_line(base_url: str) -> None:
    text = f"workspaces:\n  acme: {{base_url: '{base_url}', api_key: '${{K}}'}}\n"
    msg = _config_error(text, {"K": INSTANTLY_KEY})
    assert "workspaces.acme.base_url" in msg and len(msg.splitlines()) == 1
    assert "CANARY" not in msg


def test_env_secret_with_a_trailing_newline_is_stripped_and_an_inner_newline_refused() -> None:
    from connectors.instantly.config import workspaces
    from pipeline.config.loader import parse_config

    text = "workspaces:\n  acme: {base_url: 'https://api.instantly.ai', api_key: '${K}'}\n"
    cfg = parse_config(text, env={"K": INSTANTLY_KEY + "\n"})
    assert workspaces(cfg)["acme"].api_key.get_secret_value() == INSTANTLY_KEY
    msg = _config_error(text, {"K": "CANARY-inner\nnewline-secret"})
    assert "workspaces.acme.api_key" in msg and "control character" in msg
    assert "CANARY" not in msg


async def test_client_turns_a_request_aiohttp_refuses_into_a_source_error() -> None:
    """A value aiohttp will not send (a newline in the key header) is a SourceError naming no value."""
    from pydantic import SecretStr

    from connectors.instantly.budget import RequestBudget
    from connectors.instantly.client import InstantlyClient
    from connectors.instantly.config import WorkspaceConfig
    from pipeline.errors import SourceError

    with EchoServer(200) as srv:
        valid = WorkspaceConfig(api_key=SecretStr("x" * 8), base_url=srv.url).__dict__
        bad = {**valid, "api_key": SecretStr("CANARY-key\nX-Evil: 1"), "max_retries": 0}
        cfg = WorkspaceConfig.model_construct(**bad)
        async with InstantlyClient(cfg, budget=RequestBudget(1000, 6000)) as client:
            with pytest.raises(SourceError) as info:
                await client.get("/api/v2/workspaces/current")
        # aiohttp connects before it refuses the header: let the server thread finish accepting that
        # connection, so its shutdown closes it (else a half-accepted socket is left for the GC to find)
        await asyncio.sleep(0.2)
    assert "CANARY" not in str(info.value) and "malformed" in str(info.value)
    assert not info.value.retriable


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("webhook:\n  sources:\n    crm: {path: /hooks/x, secrets: 123456789012345678901234567}\n", {}),
        ("telemetry:\n  otlp: {endpoint: 'http://127.0.0.1:4318', headers: {x: 123456789012345678901234567}}\n", {}),
        ("telemetry:\n  otlp: {endpoint: 'otel:4318/?k=${OT}'}\n", {"OT": "123456789012345678901234567"}),
        ("webhook:\n  sources:\n    crm: {path: 'hooks/${OT}', secrets: ['${S}']}\n",
         {"OT": "123456789012345678901234567", "S": "s" * 32}),
    ],
)  # fmt: skip
def test_config_errors_do_not_echo_secret_paths_or_interpolated_values(text: str, env: dict[str, str]) -> None:
    msg = _config_error(text, env)
    assert "123456789012345678901234567" not in msg, msg


async def _cannot_post(req: web.Request) -> web.Response:
    await req.read()
    return web.Response(text=f"Cannot {req.method} {req.path_qs}", status=500)


async def test_signed_webhook_path_is_not_shown_in_failures(tmp_path: Path) -> None:
    """A Zapier/n8n hook path is the credential: ``Cannot POST <path>`` and URL-bearing errors lose it."""
    from pipeline.observability.logs import redact_text as log_redact

    with EchoServer(404, handler=_cannot_post) as srv:
        url = f"{srv.url}/hooks/catch/123/CANARY-whpath-PPP666"
        scfg = {"type": "webhook", "url": url, "secret": EnvValue("whsec_" + base64.b64encode(b"k" * 24).decode())}
        sink = build_sink("wh", scfg)
        said: list[str] = []
        async with sink:
            for call in (sink.healthcheck(), sink.send([ev(1)])):
                try:
                    result = await call
                    said += [f.error for f in getattr(result, "failures", [])]
                except PipelineError as err:
                    said.append(str(err))
    assert said
    for text in said:
        assert "CANARY" not in log_redact(text), text
        assert "CANARY" not in redact_text(text), text


def test_rules_worker_logger_is_under_the_redacting_tree() -> None:
    from pipeline.rules import worker

    assert worker.log.logger.name.startswith("instantly_audit.")
