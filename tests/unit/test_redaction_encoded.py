"""Canary: a configured secret never comes out *encoded* — base64 (alone, or inside ``user:<secret>``
as an HTTP Basic header carries it, standard or URL-safe, padded or not), JSON-escaped, with
lower-case percent escapes — nor as HTTP Basic credentials or ``Authorization: <scheme> <value>``;
a hook URL's token does not survive percent-encoded or JSON-escaped, nor a relative URL's
``code``/``auth``/``sec`` parameter; an exception leaving a span is exported redacted.

The check is independent of the redaction: every run of base64 characters left in the output is
decoded at every alignment and searched for the secret.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.bus.sqlite import SqliteBus
from pipeline.observability.logs import JsonFormatter, RedactingFilter
from pipeline.redaction import encode_event, redact_text, register_secret, registry
from pipeline.sources.webhook.receiver import WebhookReceiver
from schemas.event import Event, Source, WorkspaceRef
from tests.unit.test_webhook_support import SECRET_A, delivery, events_of, hdrs, letters_of, make_config, serve

CANARY = "CnRy-Enc0ded-s3cret_9Qx"
_RUN = re.compile(r"[A-Za-z0-9+/_-]{6,}={0,2}")


pytestmark = pytest.mark.usefixtures("clean_secret_registry")


def b64(text: str, *, urlsafe: bool = False, pad: bool = True) -> str:
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    return enc if pad else enc.rstrip("=")


def decoded_runs(text: str) -> list[bytes]:
    """Every run of base64 characters in ``text`` decoded at each of the 4 character offsets (both alphabets)."""
    out: list[bytes] = []
    for m in _RUN.finditer(text):
        run = m.group(0).rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):
            part = run[start:]
            if len(part) % 4 == 1:
                part = part[:-1]
            if part:
                out.append(base64.b64decode(part + "=" * (-len(part) % 4)))
    return out


def assert_no_secret(text: str, secret: str) -> None:
    """Neither the secret nor any base64 encoding of it is in ``text`` (the message never quotes either)."""
    raw = secret in text  # computed first: a failing assert must not print the text it searched
    encoded = any(secret.encode() in d for d in decoded_runs(text))
    assert not raw, "the raw secret is in the output"
    assert not encoded, "a base64 form of the secret is in the output"


ENCODED = {
    "alone": lambda s: b64(s),
    "alone, unpadded": lambda s: b64(s, pad=False),
    "alone, url-safe": lambda s: b64(s, urlsafe=True, pad=False),
    "basic user:secret, offset 0": lambda s: b64(f"svc:{s}"),
    "basic user:secret, offset 1": lambda s: b64(f"elastic:{s}"),
    "basic user:secret, offset 2": lambda s: b64(f"ab:{s}"),
    "secret then more": lambda s: b64(f"{s}:more-data"),
    "url-safe inside": lambda s: b64(f"u:{s}?x", urlsafe=True),
}


@pytest.mark.parametrize("name", ENCODED)
def test_base64_forms_of_a_registered_secret_are_redacted(name: str) -> None:
    register_secret(CANARY)
    form = ENCODED[name](CANARY)
    for text in (form, f"upstream echoed X-Auth: {form} (refused)", f'{{"hdr":"{form}"}}'):
        out = redact_text(text)
        assert_no_secret(out, CANARY)
        assert "<redacted>" in out


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=8, max_size=40),
    prefix=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=9),
    suffix=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=5),
    urlsafe=st.booleans(),
)
def test_any_secret_base64_encoded_anywhere_is_redacted(secret: str, prefix: str, suffix: str, urlsafe: bool) -> None:
    registry.forget_secrets()
    register_secret(secret)
    text = f"seen {b64(prefix + secret + suffix, urlsafe=urlsafe)} here"
    out = redact_text(text)
    found = any(secret.encode() in d for d in decoded_runs(out))
    assert not found


def test_base64_cores_need_enough_bytes() -> None:
    from pipeline.redaction.registry import base64_cores

    # 4-5 bytes give cores of 4 characters at most (a chance match ~1 in 10^7): none
    assert base64_cores("abcd") == () and base64_cores("abcde") == ()
    # 6 bytes: an 8-character core at 1 alignment of 3, 7 bytes at 2 (standard = URL-safe alphabet here)
    assert [(len(c), left) for c, left, _ in base64_cores("abcdef")] == [(8, 0)]
    assert sorted(left for _, left, _ in base64_cores("abcdefg")) == [0, 4]
    cores = base64_cores("abcdefgh")
    assert len(cores) == 3 and all(len(core) >= 8 for core, _, _ in cores)


def test_json_escaped_and_lower_case_percent_forms_are_redacted() -> None:
    slack = "https://hooks.slack.com/services/T0CANARY/B0CANARY/xYzCanaryToken42"
    pw = "pässwörd-Canary-42/x"
    register_secret(slack)
    register_secret(pw)
    texts = [
        json.dumps({"url": slack}).replace("/", "\\/"),  # PHP / some JS encoders escape "/"
        json.dumps({"password": pw}),  # ensure_ascii: \u00e4
        "GET /cb?pw=" + re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(pw, safe="")),
    ]
    for text in texts:
        out = redact_text(text)
        found = [c for c in ("xYzCanaryToken42", "T0CANARY", "w\\u00f6rd-Canary", "rd-Canary-42") if c in out]
        assert not found


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Basic {b64('user:pass')}",  # short, no digit: was kept
        f"proxy said: basic {b64('bob:Summer')}",
        f"Basic {b64('a:b')}",
        "Authorization: Splunk 6c1e3a3f-1b2c-4d5e-8f90-0a1b2c3d4e5f",  # HEC scheme, not in the scheme list
        "authorization=SSWS 00abcDEFghiJKL",
        '"Authorization": "Key sk_live_abc"',
    ],
)
def test_http_credentials_after_any_scheme_are_redacted(text: str) -> None:
    out = redact_text(text)
    kept = text.split()[-1].strip('"') in out  # the credentials, whatever their length
    assert not kept
    for secret in ("user:pass", "bob:Summer", "a:b"):
        assert_no_secret(out, secret)
    found = [s for s in ("6c1e3a3f-1b2c-4d5e-8f90-0a1b2c3d4e5f", "00abcDEFghiJKL", "sk_live_abc") if s in out]
    assert not found


def test_basic_prose_and_realms_stay_readable() -> None:
    for text in ("Basic auth is required", "basic information available", "Authorization header was missing"):
        assert redact_text(text) == text


def test_words_after_basic_that_decode_to_no_credentials_stay() -> None:
    """``Basic <word>`` is redacted only when the word decodes to credentials (printable
    ``user:password``, or ``:<token>`` of 8+ characters): "Outreach" (bytes with a colon, not text)
    and "Only" (``:yr``) are a campaign's and a sentence's words, kept; real credentials still go."""
    for text in ("Basic Outreach Q3", "Open the Basic Options tab", "the Basic Only plan", "Basic Operations"):
        assert redact_text(text) == text
    for cred in ("u:p", "user:pass", ":" + "t" * 52):
        assert redact_text(f"Authorization: Basic {b64(cred)}").endswith("<redacted>")
        assert redact_text(f"basic {b64(cred)}") == "basic <redacted>"


def test_a_bare_scheme_in_prose_is_not_a_url() -> None:
    """``http://`` with nothing after it names a scheme, not a URL: left as written."""
    for text in ("Callback URL must start with http:// or https://", "redirect to https://<host>/x",
                 "percent-encoded https%3A%2F%2F or escaped https:\\/\\/ alone"):  # fmt: skip
        assert redact_text(text) == text
    assert redact_text("https://u:pw@hooks.example.com/services/T/B/x").startswith("https://hooks.example.com/sha256:")


def test_publish_gate_and_logs_drop_the_base64_of_a_secret() -> None:
    register_secret(CANARY)
    basic = b64(f"elastic:{CANARY}")
    ev = Event.build(
        type="audit.activity_99", time="2026-01-01T00:00:00.000Z", observed_at="2026-01-01T00:00:00.000Z",
        workspace=WorkspaceRef("ws-1", "Acme"), source=Source("audit_log", "audit_logs", "r-1"),
        natural_key=("r-1",), attributes={"note": f"curl -H 'X-Auth: {basic}'"},
        raw={"audit_metadata": {"forwarded": b64(CANARY, urlsafe=True)}},
    )  # fmt: skip
    data = encode_event(ev).decode()
    assert_no_secret(data, CANARY)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    lg = logging.getLogger("canary.encoded")
    lg.handlers, lg.propagate = [handler], False
    lg.warning("upstream refused %s", basic, extra={"echo": f"Basic {basic}"})
    try:
        raise RuntimeError(f"401 for header {b64(CANARY)}")
    except RuntimeError:
        lg.exception("failed")
    assert_no_secret(buf.getvalue(), CANARY)


async def test_webhook_receiver_publishes_no_base64_form_of_its_secret(tmp_path: Path) -> None:
    """A delivery whose fields echo the receiver's own secret base64-encoded: the bus holds no form of it."""
    basic = b64(f"instantly:{SECRET_A}")
    async with SqliteBus(tmp_path / "bus.db") as bus:
        receiver = WebhookReceiver(make_config((SECRET_A,)), bus)
        async with serve(receiver) as client:
            body = delivery(1, email_text=f"forwarded with Authorization: Basic {basic}", reply_text=b64(SECRET_A))
            resp = await client.post("/hooks/crm", data=body, headers=hdrs(SECRET_A))
            assert resp.status == 200, await resp.text()
            resp = await client.post("/hooks/crm", data=b"{broken " + basic.encode(), headers=hdrs(SECRET_A))
            assert resp.status == 200  # authenticated but not a delivery: acknowledged, dead-lettered
        stored = [rec.value.decode() for rec in await events_of(bus)]
        stored += [orjson.dumps(letter).decode() for letter in await letters_of(bus)]
    assert len(stored) == 2
    for text in stored:
        assert_no_secret(text, SECRET_A)


def test_an_exception_leaving_a_span_is_exported_without_secrets() -> None:
    """A span records an escaping exception (message, stack trace, status) for OTLP and the console:
    the registered secret, its base64 form and a hook URL's token are not in what is exported."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from pipeline.clock import FakeClock
    from pipeline.observability.telemetry import Telemetry
    from pipeline.observability.telemetry_config import TelemetryConfig

    register_secret(CANARY)
    spans, console = InMemorySpanExporter(), io.StringIO()
    tel = Telemetry(
        TelemetryConfig(console=True), role="pollers", clock=FakeClock(), span_exporters=[spans], console_stream=console
    )
    hook = "https://hooks.slack.com/services/T0/B0/CnRyHookTok3n42"
    try:
        with pytest.raises(RuntimeError), tel.span("poll.stream", {"stream": "webhooks"}):
            raise RuntimeError(f"refused {CANARY} / Basic {b64('elastic:' + CANARY)} posting to {hook}")
    finally:
        tel.shutdown()
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events and span.events[0].name == "exception"
    exported = [span.to_json(), console.getvalue()]
    assert "RuntimeError" in exported[0]
    for text in exported:
        assert_no_secret(text, CANARY)
        hook_token = "CnRyHookTok3n42" in text
        assert not hook_token


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("forwarding to url=https%3A%2F%2Fhooks.slack.com%2Fservices%2FT0%2FB0%2FCnRyTok42&x=1", "CnRyTok42"),
        ("redirect https%3a%2f%2fhooks.zapier.com%2fhooks%2fcatch%2f1%2fCnRyZap42", "CnRyZap42"),
        ('{"error":"bad target https:\\/\\/hooks.zapier.com\\/hooks\\/catch\\/1\\/CnRyZap42"}', "CnRyZap42"),
        ("Cannot POST /hooks/crm?auth=CnRyAuth42", "CnRyAuth42"),
        ("GET /oauth/callback?code=4/0CnRyCode42&state=xyz", "CnRyCode42"),
        ("GET /login?otp=918273&sec=CnRySec42", "CnRySec42"),
    ],
)
def test_encoded_urls_and_query_credentials_of_relative_urls_are_redacted(text: str, token: str) -> None:
    """Unregistered credentials (a hook URL carried percent-encoded or JSON-escaped, a relative URL's
    ``code``/``auth``/``sec`` parameter) go like those of a plain absolute URL."""
    out = redact_text(text)
    found = token in out
    assert not found
    assert ("hooks." in out) == ("hooks." in text)  # the host of a hook URL stays readable


def test_words_like_code_stay_readable_outside_a_query() -> None:
    for text in ("exit code=1234 after 3 tries", "error code: E1234", "status code 404"):
        assert redact_text(text) == text


@pytest.mark.parametrize(
    "template",
    [
        "GET failed: see https://user:{secret}@hooks.example.com/services/T0/B0/CnRyHook42?x=1 now",
        "POST https://n8n.example.com/webhook{secret}?x=CnRyHook42 failed",
        "GET https://api.example.com/v1?a={secret}&b=CnRyHook42 done",
        '{{"error": "bad target https:\\/\\/user:{secret}@hooks.example.com\\/x\\/CnRyHook42"}}',
        "next=https%3A%2F%2Fhooks.example.com%2Fx%3Fa%3D{secret}%26b%3DCnRyHook42&y=1",
    ],
)
def test_a_registered_secret_inside_a_url_does_not_cut_the_url_short(template: str) -> None:
    """The registered-value pass runs first and leaves ``<redacted>`` inside a URL of a log line: the
    URL pass still takes the whole URL, so the rest of its path and query (an unregistered hook
    token) is fingerprinted too, and the userinfo goes."""
    register_secret("CnRyPw-77xyz")
    register_secret("/CnRyPath0123456")
    for secret in ("CnRyPw-77xyz", "/CnRyPath0123456"):
        text = template.format(secret=secret)
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        handler.addFilter(RedactingFilter())
        lg = logging.getLogger("canary.url_cut")
        lg.handlers, lg.propagate = [handler], False
        lg.warning("%s", text)
        for out in (redact_text(text), buf.getvalue()):
            found = [t for t in ("CnRyHook42", "CnRyPw", "CnRyPath", "user:", "user<") if t in out]
            assert not found
            assert "example.com" in out


@pytest.mark.parametrize("padding", [0, 5000])
def test_base64_forms_are_found_among_many_registered_values(padding: int) -> None:
    """An agency registers hundreds of values: a short text is scanned through the base64 index, a
    long one tested per value; both find every value's base64 form, at every alignment."""
    values = [f"CnRy-agency-{i:03d}-s3cret" for i in range(120)]
    for value in values:
        register_secret(value)
    assert registry.base64_groups() > 100
    filler = "x" * padding
    for value in values[::7]:
        for user in ("", "a:", "ab:", "elastic:"):
            text = f"{filler}seen {b64(user + value)} and {b64(value + '!', urlsafe=True)} here"
            assert_no_secret(redact_text(text), value)
