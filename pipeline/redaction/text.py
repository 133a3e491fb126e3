"""Free text: registered values, credential shapes and URLs removed from a string.

:func:`redact_text` is the value + shape pass the logs and the gate share:

1. every registered secret (raw or URL-encoded) becomes ``<redacted>`` or its fingerprint;
2. ``Bearer|Basic|Token <value>`` keeps the scheme word, the value becomes ``<redacted>`` (a
   ``Basic`` value that decodes to ``user:password`` whatever its length, and the credentials
   after any scheme in an ``Authorization: <scheme> <credentials>`` header);
3. JWTs (``eyJ….….…``), connector-registered shapes (the Instantly key) and published token
   formats (:data:`_TOKENS`: Slack ``xox?-``/``xapp-``, GitHub ``ghp_``/``github_pat_``, an AWS
   secret access key beside its access key id) are replaced;
4. a value after a secret-ish word (``token=…``, ``"api_key": "…"``, ``secret …`` when long and
   mixed) becomes ``<redacted>``;
5. URLs lose userinfo, fragment, and their path/query become a fingerprint (:mod:`.urls`), also
   written without a scheme when protocol-relative or a webhook service's hook URL.

:func:`looks_clean` is the fast path: ids, timestamps and addresses cannot hold any of these.

:func:`replace_fragments` is for short upstream text that may echo a secret *cut* (an error body
quoting the first 24 characters of the key): any run of :data:`FRAGMENT_CHARS` or more consecutive
characters of a secret is removed. It is not one of the gate's passes (a scan per string would
cost the gate more than all its passes, see ``docs/redaction.md``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable, Set

from pipeline.redaction import registry
from pipeline.redaction.urls import has_url, redact_bare_urls, redact_urls_in
from schemas.ids import fingerprint_secret

REDACTED = "<redacted>"
_ALREADY = re.compile(r"^(<redacted>|sha256:[0-9a-f]{8,64})$")
_SCHEME = re.compile(
    r"(?i)\b(bearer|basic|token|apikey|digest|negotiate)(\s+|%20|\+)"
    r"(?!<redacted>)((?=[A-Za-z0-9._~+/=-]*[0-9=+/_~.-])[A-Za-z0-9._~+/=-]{6,}|[A-Za-z0-9._~+/=-]{16,})"
)
_BASIC = re.compile(r"(?i)\b(basic)(\s+|%20|\+)(?!<redacted>)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
"""``Basic <base64>``: any length, kept only when it does not decode to ``user:password`` (:func:`_basic_sub`)."""
_AUTH_VALUE = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?)([A-Za-z][A-Za-z0-9_.-]*)([ \t]+|%20|\+)"
    r"(?!<redacted>|sha256:)([^\s\"',;&}]+)"
)
"""``Authorization: <scheme> <credentials>`` with any scheme (``Splunk``, ``SSWS``, ``Key``...): the
credentials go, whatever their length."""
_QUERY_NAMED = re.compile(r"(?i)([?&;](?:code|auth|sec|otp|hmac)=)(?!<redacted>|sha256:)([^\s\"'&#<>]{4,})")
"""A query parameter of a relative URL (``/callback?code=…``, ``/hook?auth=…``) whose short name is a
credential there (an OAuth authorization code, the name rule's ``auth`` and ``sec``, a one-time
password, a request HMAC as Shopify signs its callbacks) but too common in prose for the
assigned-value pass; absolute URLs lose their whole query."""
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_UUID_VALUE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![^\s\"',;&}])"
_ASSIGNED = re.compile(
    # no plural ``api_keys:``/``tokens:``: Instantly scopes (``api_keys:read``, ``security_tokens:all``) read so
    r"(?i)((?:api[-_ ]?key|x-api-key|access[-_ ]?key|secret[-_ ]?key|private[-_ ]?key|(?P<bare>key)|token|secrets?"
    r"|passwords?|passwd|pwd|passphrase|passcode|credentials?|authorization|cookie|sig|signature"
    r"|(?<![A-Za-z0-9])(?:pass|pw|session))[\"']?\s*[:=]\s*[\"']?)"
    rf"(?(bare)(?!{_UUID_VALUE}))"  # a bare ``key:<uuid>`` names a key by its id (an alert's dedup key): kept
    r"(?!<redacted>|sha256:)([^\s\"',;&}]{4,})"
)
_NEAR_WORD = re.compile(
    r"(?i)\b(key|token|secret|password|passphrase|credentials?|apikey)(\s+(?:is\s+|was\s+)?)"
    r"(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)"  # a key *id* (uuid) stays readable
    r"(?=[A-Za-z0-9+/=_-]*[0-9])(?=[A-Za-z0-9+/=_-]*[A-Za-z])([A-Za-z0-9+/=_-]{16,})"
)
_PASS_NEAR = re.compile(
    r"(?i)(?<![A-Za-z0-9])(pass(?:word|wd|code|phrase)?|pw|pwd)(\s+(?:(?:is|was|to|now|(?:set|reset|changed)\s+to)\s+)?)"
    r"(?!<redacted>|sha256:)(?=\S*[0-9!@#$%^&*])(?=\S*[A-Za-z])([^\s\"',;]{8,})"
)
"""``reset smtp pass to Hunter2!x``, ``pass CNRYabc123``: a password named in prose, shorter than
:data:`_NEAR_WORD` needs, when it has 8 or more characters, a letter and a digit or a symbol
(``pass to the next step``, ``pass 2 tests`` stay readable)."""
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)")
_AFTER_ESCAPE = r"(?<=%[0-9A-Fa-f]{2})|(?<=%25[0-9A-Fa-f]{2})"
"""Right after a percent-escape, once or twice encoded (``%20``, ``%3D``, ``%253D``): it ends in a hex
digit, yet a token there starts a new word (``?text=Use%20xoxb-…``, ``slack%3Dxoxb-…``)."""
_TOKENS = re.compile(
    rf"(?:(?<![A-Za-z0-9_-])|{_AFTER_ESCAPE})(?:"
    r"(?:xox[abprse](?:\.xox[bp])?|xapp)-(?=[0-9A-Za-z-]*[0-9])[0-9A-Za-z][0-9A-Za-z-]{8,}"  # Slack
    r"|xoxo-[0-9]{6,}-[0-9]{6,}-[0-9]{6,}-[0-9a-fA-F]{8,}"  # Slack legacy token (``xoxo`` is also a word)
    r"|gh[opsur]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251}"  # GitHub
    r")(?![A-Za-z0-9_])"
)
"""Tokens whose published prefix says what they are (what GitHub's secret scanning and gitleaks key
on): Slack bot/user/app/refresh tokens (``xoxb-``, ``xoxp-``, ``xoxa-``, ``xoxr-``, ``xoxs-``, ``xoxe-``,
``xoxe.xoxp-``, ``xapp-``, with a digit), Slack's legacy ``xoxo-`` tokens only in their shape (three
numeric ids and a hex tail: ``xoxo-2024-summer-sale`` is a campaign name) and GitHub tokens
(``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` + 36 or more, ``github_pat_``); also right after a
percent-escape (:data:`_AFTER_ESCAPE`)."""
_AWS_KEY_ID = re.compile(rf"(?:(?<![A-Za-z0-9])|{_AFTER_ESCAPE})(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{{16}}(?![A-Za-z0-9])")
"""An AWS access key id: an id (it names the key, as ``api_key_id`` does), readable; its presence makes
a 40-character secret beside it (:data:`_AWS_SECRET`) the key's secret."""
_AWS_SECRET = re.compile(
    rf"(?:(?<![A-Za-z0-9/+%])|(?:{_AFTER_ESCAPE})(?<!%2[BbFf])(?<!%252[BbFf]))"  # not inside an encoded run
    r"(?:[A-Za-z0-9/+]|%2[BbFf]|%252[BbFf]){40}"
    r"(?![A-Za-z0-9/+=]|%(?:25)?(?:2[BbFf]|3[Dd]))"
)
"""40 characters of ``[A-Za-z0-9/+]``, ``/`` and ``+`` possibly percent-encoded (once or twice), also right
after a percent-escape (``AKIA…%3AwJal…%2FK7…``); :func:`_aws_secret_sub` takes them when, decoded,
they hold a lower- and an upper-case letter and a digit or ``/``/``+``."""
_AWS_SECRET_KINDS = (re.compile("[a-z]"), re.compile("[A-Z]"), re.compile("[0-9/+]"))


def _aws_secret_sub(m: re.Match[str]) -> str:
    """The fingerprint of the secret :data:`_AWS_SECRET` matched (decoded: the same as written plainly)."""
    found = m.group(0)
    if "%" in found:
        found = re.sub("%(?:25)?2[Bb]", "+", re.sub("%(?:25)?2[Ff]", "/", found))
    return fingerprint_secret(found) if all(kind.search(found) for kind in _AWS_SECRET_KINDS) else m.group(0)


CLEAN_CHARS = "0123456789abcdefABCDEF-:.TZ+ "
"""Ids, uuids, timestamps and IP addresses are made of these alone (no shape can hide in them)."""
_SHORT = 6


def is_redacted(value: object) -> bool:
    """True for ``<redacted>`` and ``sha256:`` fingerprints."""
    return isinstance(value, str) and bool(_ALREADY.match(value))


def looks_clean(text: str) -> bool:
    """Cheap: short strings and hex/uuid/timestamp/address strings hold no shape (registered values aside)."""
    return len(text) < _SHORT or not text.strip(CLEAN_CHARS)


def replace_registered(text: str, *, fingerprint: bool = True) -> str:
    """Replace every registered secret in ``text`` (by its fingerprint, or ``<redacted>``), in any
    form the registry knows (raw, URL-, JSON- or ``repr``-escaped, base64)."""
    secrets = registry.known_secrets()
    for secret in secrets:
        if secret.prefix in text:  # every form starts with it: one test for a text holding none
            for form in secret.forms:
                if form in text:
                    text = text.replace(form, secret.fingerprint if fingerprint else REDACTED)
    index = registry.base64_index()
    if not index:
        return text
    gram = registry.B64_GRAM
    hits: list[tuple[registry.KnownSecret, str, int, int]] = []
    if len(text) < registry.base64_groups():  # a scan costs less than one test per alignment group
        for i in range(0, len(text) - gram + 1, gram):
            found = index.get(text[i : i + gram])
            if found is not None:
                hits += found
    else:
        hits = [(secret, *core) for secret in secrets for prefix, cores in secret.b64_groups if prefix in text
                for core in cores]  # fmt: skip
    for secret, core, left, right in hits:
        if core in text:
            text = _replace_b64(text, core, left, right, secret.fingerprint if fingerprint else REDACTED)
    return text


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")


def _replace_b64(text: str, core: str, left: int, right: int, replacement: str) -> str:
    """``text`` with each ``core`` (a base64 core, :func:`registry.base64_cores`) replaced together
    with the up to ``left``/``right`` base64 characters beside it that also depend on the secret
    (and the ``=`` padding after it)."""
    out: list[str] = []
    pos = 0
    while (i := text.find(core, pos)) >= 0:
        start = i
        while start > pos and i - start < left and text[start - 1] in _B64_CHARS:
            start -= 1
        end = i + len(core)
        while end < len(text) and end - i - len(core) < right and text[end] in _B64_CHARS:
            end += 1
        while end < len(text) and text[end] == "=":
            end += 1
        out += [text[pos:start], replacement]
        pos = end
    out.append(text[pos:])
    return "".join(out)


_TRIGGERS = (
    "key", "token", "secret", "pass", "pw", "session", "credential", "authoriz", "cookie", "sig",
    "bearer", "basic", "digest", "negotiate", "code=", "auth=", "sec=", "otp=", "hmac=",
)  # fmt: skip
"""Lower-case words one of which every match of ``_SCHEME``, ``_ASSIGNED``, ``_QUERY_NAMED`` and
``_NEAR_WORD`` contains (``pass`` covers password/passwd/passphrase/passcode, ``pw`` pwd, ``key`` apikey
and every ``*key``, ``sig`` signature)."""


def _no_trigger(text: str) -> bool:
    """Whether no fixed pass can match ``text``: ASCII, no JWT or PEM start, none of :data:`_TRIGGERS`.

    The case-insensitive patterns match an ASCII text only where its lower-case form holds the
    word (outside ASCII, ``(?i)`` also folds the long s onto ``s``: such text takes every pass).
    """
    if not text.isascii() or "eyJ" in text or "-----BEGIN" in text:
        return False
    low = text.lower()
    return not any(word in low for word in _TRIGGERS)


def _known_tokens(text: str) -> str:
    """Published token formats (:data:`_TOKENS`) and an AWS secret key beside its key id → fingerprints."""
    if ("-" in text and ("xox" in text or "xapp" in text)) or ("_" in text and ("gh" in text or "github" in text)):
        text = _TOKENS.sub(lambda m: fingerprint_secret(m.group(0)), text)
    if ("AKIA" in text or "ASIA" in text or "ABIA" in text or "ACCA" in text) and _AWS_KEY_ID.search(text):
        text = _AWS_SECRET.sub(_aws_secret_sub, text)
    return text


def replace_shapes(text: str) -> str:
    """Replace credential shapes (scheme tokens, JWTs, connector shapes, assigned and nearby secrets).

    Text that holds no trigger word (:func:`_no_trigger`) only meets the connector shapes and the
    published token formats (:func:`_known_tokens`); when none of them matches either, no pattern
    can (the result is ``text`` itself). Any match runs every pass in order, as for any other text.
    """
    if _no_trigger(text):
        out = text
        for shape in registry.shapes():
            out = shape.pattern.sub(functools.partial(_shape_sub, shape), out)
        if _known_tokens(out) == text:
            return text
    return _all_shapes(text)


def _all_shapes(text: str) -> str:
    """Every shape pass, in order (:func:`replace_shapes` without the trigger-word shortcut)."""
    if "-----BEGIN" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    text = _BASIC.sub(_basic_sub, text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{REDACTED}", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    for shape in registry.shapes():
        text = shape.pattern.sub(functools.partial(_shape_sub, shape), text)
    text = _known_tokens(text)
    text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _QUERY_NAMED.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _PASS_NEAR.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _NEAR_WORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def _basic_sub(m: re.Match[str]) -> str:
    """``Basic <value>`` with the value redacted when it decodes to ``user:password`` (HTTP Basic)."""
    value = m.group(3)
    try:
        decoded = base64.b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4), validate=True)
    except (ValueError, binascii.Error):
        return m.group(0)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return m.group(0)  # "Basic Outreach": a word, not credentials (they are text, "user:password")
    user, colon, password = text.partition(":")
    # credentials: "user:password" (or ":<token>" as Azure DevOps sends a PAT); "Basic Only" is b":yr"
    credentials = colon and text.isprintable() and (user or len(password) >= 8)
    return f"{m.group(1)}{m.group(2)}{REDACTED}" if credentials else m.group(0)


def _shape_sub(shape: registry.Shape, m: re.Match[str]) -> str:
    found = m.group(0)
    return fingerprint_secret(found) if shape.check is None or shape.check(found) else found


def redact_text(text: str, *, fingerprint: bool = False) -> str:
    """Registered values, shapes and URL credentials removed from ``text``.

    ``fingerprint``: registered values become their ``sha256:`` fingerprint (records) instead of
    ``<redacted>`` (logs, error messages).
    """
    text = replace_registered(text, fingerprint=fingerprint)
    if looks_clean(text):
        return text
    if has_url(text):
        text = redact_urls_in(text)
    return replace_shapes(redact_bare_urls(text))


FRAGMENT_CHARS = 12
"""The shortest run of a secret's characters :func:`replace_fragments` removes."""


def fragment_index(values: Iterable[str], k: int = FRAGMENT_CHARS) -> frozenset[str]:
    """Every ``k``-character substring of ``values``, except those made of :data:`CLEAN_CHARS` alone
    (hex digits, ``-``, ``:``, ...): a run of an id or a time inside a secret — the uuid an Instantly
    key decodes to is the key's readable id — is not taken for a piece of it."""
    return frozenset(gram for v in values for i in range(len(v) - k + 1) if (gram := v[i : i + k]).strip(CLEAN_CHARS))


def replace_fragments(text: str, index: Set[str], k: int = FRAGMENT_CHARS) -> str:
    """``text`` with every run of ``k`` or more characters found in ``index`` (:func:`fragment_index`)
    replaced by ``<redacted>``: a secret cut anywhere still loses every piece of ``k`` characters or more.

    Linear in ``len(text)`` (one set lookup per position); meant for short text (error messages).
    """
    if len(text) < k or not index:
        return text
    spans: list[list[int]] = []
    for i in range(len(text) - k + 1):
        if text[i : i + k] in index:
            if spans and i <= spans[-1][1]:
                spans[-1][1] = i + k
            else:
                spans.append([i, i + k])
    if not spans:
        return text
    out, prev = [], 0
    for start, end in spans:
        out += [text[prev:start], REDACTED]
        prev = end
    out.append(text[prev:])
    return "".join(out)


@functools.lru_cache(maxsize=4)
def _registered_index(generation: int) -> frozenset[str]:
    del generation  # the cache key: the registry moved, the index is rebuilt
    return fragment_index(form for secret in registry.known_secrets() for form in secret.forms)


def registered_fragments() -> frozenset[str]:
    """:func:`fragment_index` of every form of every registered secret (rebuilt when the registry moves)."""
    return _registered_index(registry.generation())
