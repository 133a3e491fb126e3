"""Canary: secrets nobody registered, recognised by their shape, and hook URLs written without a scheme.

An Instantly webhook delivery, an audit record or a log line may quote a credential the pipeline
was never configured with: a Slack or GitHub token pasted into a campaign note, an AWS key pair in
an error text, a Slack/Zapier/Make/Discord/Teams hook URL copied without ``https://``, a
protocol-relative URL (``//host/path?access_token=…``). Each must leave no trace on the bus, in
dead letters or in logs. Registered values must also go when encoded twice (``%252F``) and, from
6 bytes on, when base64-encoded.

False positives matter as much: a corpus of realistic Event v1 records (ids, UUIDs, hex hashes,
git SHAs, emails, domains, URLs without secrets, campaign names, prose with ``//``) must come out
of the gate byte for byte as it went in, with secrets registered.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest

import connectors.instantly.key_shape  # noqa: F401  (registers the Instantly key shape, as the connector does)
from connectors.instantly.normalize import normalize_audit_record
from pipeline.bus.sqlite import SqliteBus
from pipeline.observability.logs import JsonFormatter, RedactingFilter
from pipeline.redaction import encode_event, redact_text, redact_url, register_secret
from pipeline.redaction.gate import encode_event_full
from pipeline.sources.webhook.receiver import WebhookReceiver
from schemas.event import WorkspaceRef
from tests.unit.test_webhook_support import SECRET_A, delivery, events_of, hdrs, letters_of, make_config, serve

pytestmark = pytest.mark.usefixtures("clean_secret_registry")

WS = WorkspaceRef("019a41ff-4c08-7280-ba65-d965cf873b40", "Acme")
OBSERVED = "2026-11-27T12:00:00.000Z"

# Built by concatenation so no scanner takes this file for a leak; the shapes are the published ones.
SLACK_BOT = "xox" + "b-2718281828-3141592653589-CnRyBotT0kenQ9xZ7wLmP4vD"
SLACK_USER = "xox" + "p-2718281828-1618033988-7495813476-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
SLACK_APP = "xa" + "pp-1-A0CNRYAPP42-7495813476123-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
GITHUB_CLASSIC = "gh" + "p_CnRyGh0TokenAbCdEfGhIjKlMnOpQrStUv12"
GITHUB_FINE = "github" + "_pat_11CNRY0000Abc9Def8Ghi7_JklMnoPqrStuVwxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123"
AWS_ID = "AKIA" + "CNRY7EXAMPLE2QXY"
AWS_SECRET = "CnRy9AwsSecret/K7MDENG+bPxRfiCYEXAMPLEKY"
SLACK_HOOK_TOKEN = "CnRyHookToken9xZ7wLmP4vDq"
OTHER_INSTANTLY_KEY = base64.b64encode(b"019cc043-aecb-75c1-808d-e4737be353c3:CnRyOtherWs42x").decode()
"""Another workspace's Instantly key (base64 of ``<uuid>:<token>``), which this pipeline never registered."""
BARE_SLACK = f"hooks.slack.com/services/T0CNRY001/B0CNRY002/{SLACK_HOOK_TOKEN}"
HOOKS = {
    BARE_SLACK: SLACK_HOOK_TOKEN,
    "hooks.slack.com/workflows/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": "CnRyWorkflowSecret77",
    "hooks.slack.com/triggers/T0CNRY001/4242424242/CnRyTriggerSecret9x": "CnRyTriggerSecret9x",
    "hooks.zapier.com/hooks/catch/4242424/CnRyZap9x/": "CnRyZap9x",
    "hook.eu1.make.com/cnrymake7k2q9x4w1z8v5b3n6m0l": "cnrymake7k2q9x4w1z8v5b3n6m0l",
    "events.pagerduty.com/integration/c0ffee00cnry4242424242424242beef/enqueue": "c0ffee00cnry4242424242424242beef",
    "discord.com/api/webhooks/424242424242424242/CnRyDiscordToken-9xZ7_wLmP4vDq": "CnRyDiscordToken-9xZ7_wLmP4vDq",
    "acme.webhook.office.com/webhookb2/0a1b@0c2d/IncomingWebhook/CnRyTeams42/0e3f": "CnRyTeams42",
    "//cdn.acme-widgets.com/export.csv?access_token=CnRyProtoRel9xZ7": "CnRyProtoRel9xZ7",
    "//files.acme-widgets.com/d/CnRyPathSecret42/report.pdf": "CnRyPathSecret42",
}
"""Hook URL (no scheme) → its secret part."""
TOKENS = {
    SLACK_BOT: SLACK_BOT,
    SLACK_USER: SLACK_USER,
    SLACK_APP: SLACK_APP,
    GITHUB_CLASSIC: GITHUB_CLASSIC,
    GITHUB_FINE: GITHUB_FINE,
    f"{AWS_ID} {AWS_SECRET}": AWS_SECRET,
    f"aws access key {AWS_ID}, secret {AWS_SECRET}": AWS_SECRET,
    f"/assume?id={AWS_ID}&s={AWS_SECRET}": AWS_SECRET,
    "shop.acme-widgets.com/auth/callback?shop=acme&hmac=CnRyHmac0a1b2c3d4e5f": "CnRyHmac0a1b2c3d4e5f",
    f"x-instantly-key: {OTHER_INSTANTLY_KEY}": OTHER_INSTANTLY_KEY,
    f"api.acme-widgets.com/sync/{OTHER_INSTANTLY_KEY}/run": OTHER_INSTANTLY_KEY,
    "/sync?k=" + quote(OTHER_INSTANTLY_KEY, safe=""): OTHER_INSTANTLY_KEY[:-4],
    **HOOKS,
    # encoded: twice (a login redirect's next= inside another query), escapes in mixed case, a bare hook
    # percent-encoded in a query, a bare hook JSON-escaped
    "/login?next=" + quote(quote(f"https://{BARE_SLACK}", safe=""), safe=""): SLACK_HOOK_TOKEN,
    "/r?u=" + quote(f"https://{BARE_SLACK}", safe="").replace("%3A%2F%2F", "%3a%2F%2f"): SLACK_HOOK_TOKEN,
    "/cb?url=" + quote(BARE_SLACK, safe="") + "&state=1": SLACK_HOOK_TOKEN,
    quote(BARE_SLACK, safe=""): SLACK_HOOK_TOKEN,  # a query value on its own (an attribute): no "/" left
    BARE_SLACK.replace("/", "\\/"): SLACK_HOOK_TOKEN,
    # userinfo before a URL written without a scheme: protocol-relative, a bare hook, percent-encoded
    f"//cnry:{SLACK_HOOK_TOKEN}@db.acme-widgets.com/x": SLACK_HOOK_TOKEN,
    f"//cnry:{SLACK_HOOK_TOKEN}@db.acme-widgets.com": SLACK_HOOK_TOKEN,
    f"//u:p@hooks.slack.com/services/T0/B0/{SLACK_HOOK_TOKEN}": SLACK_HOOK_TOKEN,
    f"u:{SLACK_HOOK_TOKEN}@{BARE_SLACK}": SLACK_HOOK_TOKEN,
    "/cb?url=" + quote(f"u:p@{BARE_SLACK}", safe=""): SLACK_HOOK_TOKEN,
    # a token right after a percent-escape (a query value, encoded once or twice)
    f"text=Use%20{SLACK_BOT}%20here": SLACK_BOT,
    f"slack%3D{SLACK_USER}": SLACK_USER,
    f"next%253D{SLACK_APP}": SLACK_APP,
    f"r=%2Fcb%3Fx%3D{GITHUB_CLASSIC}": GITHUB_CLASSIC,
    f"r=%2Fcb%3Fx%3D{GITHUB_FINE}": GITHUB_FINE,
    AWS_ID + quote(f":{AWS_SECRET}", safe=""): AWS_SECRET[-16:],
    f"/assume?q=id%3D{AWS_ID}%26s%3D" + quote(AWS_SECRET, safe=""): AWS_SECRET[-16:],
    f"{AWS_ID}%3A{AWS_SECRET}": AWS_SECRET,
}
"""A text quoting an unregistered secret → the secret part that must not survive."""
CONTEXTS = ("{}", "posting to {} failed: 404", 'config {{"target": "{}"}}', "see <{}>.")


@pytest.mark.parametrize("text,secret", list(TOKENS.items()), ids=range(len(TOKENS)))
@pytest.mark.parametrize("context", CONTEXTS)
def test_unregistered_token_or_bare_hook_url_is_redacted(text: str, secret: str, context: str) -> None:
    for fingerprint in (False, True):
        assert secret not in redact_text(context.format(text), fingerprint=fingerprint)


def test_userinfo_before_a_url_without_a_scheme_goes_as_with_a_scheme() -> None:
    """A full URL loses its userinfo; a protocol-relative URL or a bare hook URL with one does too, with
    the fingerprint the same URL gets with ``https://`` (here, through the connector and the logs too)."""
    from connectors.instantly.redact import redact_url as connector_redact_url
    from pipeline.observability.logs import redact_registered
    from pipeline.observability.logs import redact_text as log_redact_text

    password, hook = "Zq7v" + "Lm2xCnRy", "secret" + "secretCnRy"
    full = redact_url(f"https://admin:{password}@db.example.com/x").removeprefix("https:")
    assert full.startswith("//db.example.com/sha256:")
    slack = redact_url(f"https://hooks.slack.com/services/T0/B0/{hook}").removeprefix("https://")
    for redact in (redact_text, connector_redact_url, log_redact_text, redact_registered):
        assert redact(f"//admin:{password}@db.example.com/x") == full
        assert redact(f"x //u:p@hooks.slack.com/services/T0/B0/{hook}") == f"x //{slack}"
        assert redact(f"x u:{password}@hooks.slack.com/services/T0/B0/{hook}") == f"x {slack}"
        assert redact(f"url=u:p@hooks.slack.com/services/T0/B0/{hook}") == f"url={slack}"
    assert redact_text(f"//admin:{password}@db.example.com") == "//db.example.com"


def test_a_token_right_after_a_percent_escape_is_redacted() -> None:
    """``%20``/``%3D`` end in a hex digit: a token right after one is still a token, and an AWS secret
    percent-encoded (``/`` as ``%2F``) beside its key id is still the key's secret."""
    bot = "xox" + "b-123456789012-abcdefGHIJ1"
    ghp = "gh" + "p_" + "Ab1" * 12
    aws_id, aws_secret = "AKIA" + "IOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for text in (f"text=Use%20{bot}%20here", f"slack%3D{bot}", f"r=%2Fcb%3Fx%3D{ghp}"):
        out = redact_text(text)
        assert bot not in out and ghp not in out and "sha256:" in out
    out = redact_text(aws_id + quote(f":{aws_secret}", safe=""))
    assert out == f"{aws_id}%3A{redact_text(f'{aws_id}:{aws_secret}').split(':', 1)[1]}"
    assert redact_text(f"50%25{bot[:4]}") == f"50%25{bot[:4]}"


def test_slack_prefixes_are_taken_and_a_xoxo_campaign_name_is_kept() -> None:
    """Slack tokens are ``xox[abprs]-``, ``xoxe-``/``xoxe.xox[bp]-`` and ``xapp-``; ``xoxo-`` only in the
    legacy token's shape (three numeric groups and a hex tail), not as a campaign name."""
    tail = "2718281828-3141592653-1618033988-0a1b2c3d4e5f6071"
    for prefix in ("xoxb", "xoxp", "xoxa", "xoxr", "xoxs", "xoxe", "xoxe.xoxp", "xapp", "xoxo"):
        assert redact_text(f"{prefix}-{tail} here").startswith("sha256:")
    for kept in ("xoxo-2024-summer-sale launched", "xoxo-2024-11-27 recap", "XOXO-2024 from the team"):
        assert redact_text(kept) == kept


def test_a_bare_hook_url_keeps_its_host_and_the_fingerprint_it_has_with_a_scheme() -> None:
    """The same hook with or without ``https://`` (or with ``//``) gets the same fingerprint, so a rule can
    still say "the same target"; the host stays readable."""
    bare = f"hooks.slack.com/services/T0CNRY001/B0CNRY002/{SLACK_HOOK_TOKEN}"
    full = redact_url("https://" + bare)
    assert full.startswith("https://hooks.slack.com/sha256:")
    assert redact_text(f"posting to {bare} failed") == f"posting to {full.removeprefix('https://')} failed"
    assert redact_text(f"src=//{bare}") == f"src=//{full.removeprefix('https://')}"
    assert redact_text("HOOKS.Slack.com/services/T0/B0/CnRyUpper42").startswith("hooks.slack.com/sha256:")


def test_aws_secret_alone_is_kept_without_its_key_id_and_the_key_id_stays_readable() -> None:
    """The 40-character secret has no prefix: taken only beside an access key id (which names the key
    and stays, as ``api_key_id`` does); 40 base64 characters on their own may be anything."""
    assert redact_text(f"{AWS_ID}:{AWS_SECRET}").startswith(f"{AWS_ID}:sha256:")
    lone = "checksum YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0 of the export"
    assert redact_text(lone) == lone


def _audit_record(text: str) -> dict[str, Any]:
    return {
        "id": "01a24def-0c18-717d-8400-6deaa0d327ba", "timestamp": OBSERVED, "organization_id": WS.id,
        "activity_type": 4, "ip_address": "203.0.113.9", "from_api": True, "user_agent": "python-requests/2.32",
        "user_id": "u-1", "user_name": "Sam", "api_key_id": "k-1",
        "audit_metadata": {"note": text, "campaign_name": f"Q4 {text}", "target": text},
    }  # fmt: skip


@pytest.mark.parametrize("text,secret", list(TOKENS.items()), ids=range(len(TOKENS)))
def test_the_gate_publishes_no_unregistered_token_fast_path_or_walk(text: str, secret: str) -> None:
    event = normalize_audit_record(_audit_record(f"pasted {text} here"), WS, OBSERVED)
    assert event.raw is not None and secret in orjson.dumps(event.raw).decode()  # planted
    fast, full = encode_event(event), encode_event_full(event)
    assert fast == full
    assert secret.encode() not in fast


async def test_webhook_receiver_and_logs_carry_no_unregistered_token(tmp_path: Path) -> None:
    """Every canary in one Instantly delivery (reply text, campaign name, a custom field) through the real
    receiver on loopback: neither the events on the bus, nor a dead letter, nor the log lines hold one."""
    texts = list(TOKENS)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    lg = logging.getLogger("canary.unregistered")
    lg.handlers, lg.propagate = [handler], False
    async with SqliteBus(tmp_path / "bus.db") as bus:
        receiver = WebhookReceiver(make_config((SECRET_A,)), bus)
        async with serve(receiver) as client:
            body = delivery(1, reply_text=" | ".join(texts), campaign_name=f"Q4 {texts[0]}", custom={"hook": texts[-3]})
            resp = await client.post("/hooks/crm", data=body, headers=hdrs(SECRET_A))
            assert resp.status == 200, await resp.text()
            broken = b"{broken " + " ".join(texts).encode()
            resp = await client.post("/hooks/crm", data=broken, headers=hdrs(SECRET_A))
            assert resp.status == 200  # authenticated, not a delivery: dead-lettered
        stored = [rec.value.decode() for rec in await events_of(bus)]
        stored += [orjson.dumps(letter).decode() for letter in await letters_of(bus)]
    lg.warning("delivery %s", " ".join(texts), extra={"body": texts})
    assert len(stored) == 2
    outputs = [*stored, buf.getvalue()]
    for i, out in enumerate(outputs):
        for j, secret in enumerate(TOKENS.values()):
            assert secret not in out, f"canary #{j} found in output #{i}"


REGISTERED = "CnRy+Twice/Enc0ded=="


@pytest.mark.parametrize("lower", [False, True])
def test_a_registered_secret_encoded_twice_is_redacted(lower: bool) -> None:
    """A URL carried in another URL's query, itself in a query (``next=…%252F…``): the value encoded twice,
    with upper- or lower-case escapes."""
    register_secret(REGISTERED)
    twice = quote(quote(REGISTERED, safe=""), safe="")
    if lower:
        twice = twice.replace("%252B", "%252b").replace("%252F", "%252f").replace("%253D", "%253d")
    assert "%25" in twice
    event = normalize_audit_record(_audit_record(f"/login?next=%2Fcb%3Fk%3D{twice}"), WS, OBSERVED)
    for out in (encode_event(event), encode_event_full(event), redact_text(f"GET /x?r={twice}").encode()):
        assert twice.encode() not in out and b"CnRy" not in out


@pytest.mark.parametrize("secret", ["Cn6Pw!", "Cn7Pw!x"])
def test_a_short_registered_secret_is_found_base64_encoded(secret: str) -> None:
    """6 and 7 bytes (under the former 8-byte minimum): found base64-encoded alone and after a prefix of 3n
    bytes (``admin:`` as HTTP Basic carries a password), where its 8-character core is."""
    register_secret(secret)
    for encoded in (base64.b64encode(secret.encode()), base64.b64encode(b"admin:" + secret.encode())):
        text = f"proxy echoed X-Creds {encoded.decode()} back"
        out = redact_text(text)
        assert "<redacted>" in out and encoded.decode() not in out
        assert base64.b64encode(secret.encode()).decode()[:8] not in out  # the 8 characters the value decides


# The false-positive corpus: realistic values that hold no secret.
CORPUS_VALUES = (
    "019cc043-aecb-75c1-808d-e4737be353c3", "66f1a2b3c4d5e6f708192a3b", "01956fbd-0eb1-72db-a565-82977a586084",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "da39a3ee5e6b4b0d3255bfef95601890afd80709",  # git SHA-1
    "jane.doe@acme-widgets.com", "sales+eu@acme.io", "acme.com", "docs.example.com/guide",
    "https://acme-widgets.com", "https://status.acme-widgets.com/",
    "www.acme-widgets.com/pricing?plan=pro&utm_source=mail",
    "app.instantly.ai/app/campaigns", "Q4 Outbound - EMEA founders (warm)", "xoxo from the team",
    "xoxo-2024-summer-sale launched",
    "Follow-up #3 (gh_actions fix)", "AKIA is not a word", "and/or", "// TODO: retry",
    "copy to //fileserver/share/exports", "see acme.com/blog/2026/11/launch for details",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "python-requests/2.32.3", "203.0.113.9", "2001:db8::1", "2026-11-27T12:00:00.000Z",
    "campaign 019cc043-0000-7000-8000-000000000001 paused by sam@acme.io",
    "hooks and hook.ups for the Make a wish campaign", "pagerduty.com/pricing", "discord.com/invite/acme",
    "list 66f1a2b3c4d5e6f708192a3b imported 1,200 leads from leads-2026-11.csv",
    "VGhpcyBpcyBqdXN0IGEgYmFzZTY0IG1lc3NhZ2UgYWJvdXQgbm90aGluZw==",  # base64 of prose
    "Ab3dEf6hIj9lMn2pQr5tUv8xYz1bCd4fGh7jKl0n",  # 40 mixed characters, no AWS key id beside it
)  # fmt: skip


def _corpus_events() -> list[Any]:
    events = []
    for i, value in enumerate(CORPUS_VALUES):
        rec = _audit_record(value)
        rec["id"] = f"01a24def-0c18-717d-8400-{i:012d}"
        rec["user_name"] = value if "@" not in value else "Sam"
        rec["user_agent"] = CORPUS_VALUES[-12] if i % 2 else value
        rec["audit_metadata"] = {
            "campaign_name": value, "list_id": "66f1a2b3c4d5e6f708192a3b", "email": "jane.doe@acme-widgets.com",
            "url": value, "description": f"updated {value}", "sequence_hash": CORPUS_VALUES[3],
        }  # fmt: skip
        events.append(normalize_audit_record(rec, WS, OBSERVED))
    return events


def test_realistic_records_without_secrets_pass_the_gate_unchanged() -> None:
    """Ids, UUIDs, hashes, emails, domains, URLs without secrets and prose: not one byte changes, with
    secrets registered (one of 6 bytes, whose base64 core is now searched) and the Instantly shape."""
    register_secret("Sh0rt!")
    register_secret("CnRy-Registered-Value-42")
    events = _corpus_events()
    for event in events:
        assert encode_event_full(event) == event.to_json()
        assert encode_event(event) == event.to_json()
    for value in CORPUS_VALUES:
        assert redact_text(value) == value


def test_config_errors_lose_a_hook_url_written_without_a_scheme() -> None:
    """Config errors take only the registered-value and URL passes (their key paths would lose words to
    the shapes): a Slack hook pasted without ``https://`` still goes."""
    from pipeline.observability.logs import redact_registered

    bare = f"hooks.slack.com/services/T0CNRY001/B0CNRY002/{SLACK_HOOK_TOKEN}"
    out = redact_registered(f"sinks.alerts.webhook_url: expected an https:// URL, got {bare}")
    assert SLACK_HOOK_TOKEN not in out and "sinks.alerts.webhook_url" in out and "hooks.slack.com/sha256:" in out


def test_repo_scan_finds_an_instantly_key_inside_a_url_path_or_query() -> None:
    """``check --repo`` takes its candidates from the same key shape: a key in a committed URL is found."""
    from connectors.instantly.repo_scan import InstantlyKeyShapeDetector

    detector = InstantlyKeyShapeDetector()
    for line in (
        f"SYNC_URL=https://api.acme-widgets.com/sync/{OTHER_INSTANTLY_KEY}/run",
        f"url: /sync?k={OTHER_INSTANTLY_KEY}",
    ):
        assert list(detector.analyze_string(line)) == [OTHER_INSTANTLY_KEY]


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: quote(v, safe="!'()*"),  # JavaScript's encodeURIComponent
        lambda v: quote_plus(v, safe="*"),  # URLSearchParams / HTML forms / Java's URLEncoder
    ],
    ids=["encodeURIComponent", "form-urlencoded"],
)
def test_a_registered_password_encoded_as_a_browser_or_node_encodes_it_is_redacted(encode: Any) -> None:
    """``encodeURIComponent`` keeps ``!'()*``: a password with ``!`` and ``/`` is ``Hunter2!x%2Fy`` in a URL
    a browser or Node.js built, a form none of Python's ``quote`` calls gives."""
    password = "CnRy2!x/y(z)*w q"
    register_secret(password)
    form = encode(password)
    event = normalize_audit_record(_audit_record(f"/login?user=sam&pw={form}&next=/"), WS, OBSERVED)
    for out in (encode_event(event), encode_event_full(event), redact_text(f"GET /x?p={form}").encode()):
        assert form.encode() not in out and b"CnRy2" not in out
