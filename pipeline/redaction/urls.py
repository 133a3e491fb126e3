"""URLs without their credentials: scheme, host and port kept; the rest fingerprinted or dropped.

* userinfo (``https://TOKEN@host``, ``user:pass@``) and the ``#fragment`` are dropped;
* path, ``;params`` and query become ``/sha256:<8 hex>`` of path + params + query — a Slack,
  Zapier, Make or n8n hook URL *is* its credential, and a signature can hide under any query
  name — unless the host is on the operator's allowlist (``redaction.url_path_hosts``): there
  the path stays and only the query is fingerprinted; and unless the whole path is one the
  pipeline builds itself (:data:`PUBLIC_PATHS`: ``/healthz``, ``/_bulk``, the HEC endpoints…)
  with no query.

Rules that read the scheme and the host (``webhook.insecure_target``) see them unchanged, and the
same URL always gets the same fingerprint, so a rule can still say "the same target".

URLs are split as WHATWG URL parsers (browsers, Node.js: what a webhook sender uses) split them,
not as :func:`urllib.parse.urlsplit` alone does: for the special schemes a backslash is a path
separator and ASCII tab and newline are removed (:func:`split_url`). ``https://evil.io\\@hooks.ok.com/x``
goes to ``evil.io``; ``urlsplit`` would name ``hooks.ok.com`` and hide the real destination.

URLs written **without a scheme** (:func:`redact_bare_urls`) go the same way when they are one
of two kinds: a protocol-relative URL (``//host.tld/path?…``: a full URL but for its scheme) and a
webhook service's hook URL, whose path is its credential (``hooks.slack.com/services/…``,
``hooks.zapier.com/hooks/…``, :data:`HOOK_PATHS`). Any other ``host/path`` in prose
(``docs.example.com/guide``) is a relative reference: its path stays, its query loses only the
values of credential names (the shape pass).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import SplitResult, quote, unquote, urlsplit

from pipeline.redaction import registry
from schemas.ids import fingerprint_secret

REDACTED = "<redacted>"
_SPECIAL_SCHEMES = ("http:", "https:", "ws:", "wss:", "ftp:", "file:")
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")


def split_url(url: str) -> SplitResult:
    """``urlsplit`` of ``url`` as a WHATWG URL parser reads it: surrounding whitespace and every ASCII
    tab/newline removed, and for a special scheme (http, https, ws, wss, ftp, file) ``\\`` read as ``/``.

    Raises:
        ValueError: ``urlsplit`` cannot split it (e.g. an invalid IPv6 host).
    """
    url = url.strip().translate(_TAB_NEWLINE)
    if url[:6].lower().startswith(_SPECIAL_SCHEMES) and "\\" in url:
        url = url.replace("\\", "/")
    return urlsplit(url)


_HOST = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_URL_IN_TEXT = re.compile(
    r"(?i)\b[a-z][a-z0-9+.-]{1,15}://(?=[^\s\"'<>]|<redacted>)[^\s\"'<>]*(?:<redacted>[^\s\"'<>]*)*"
)
"""A URL in text, across the ``<redacted>`` the registered-value pass (which runs first) left in it:
``https://host<redacted>?q=…`` is one URL, so its query after a registered path is fingerprinted too."""
_FINGERPRINT_PATH = re.compile(r"^/sha256:[0-9a-f]{8,64}$")
_STATE: dict[str, frozenset[str]] = {"hosts": frozenset()}
PUBLIC_PATHS = frozenset({
    "/healthz", "/readyz", "/metrics",  # this process's service port
    "/_bulk", "/",  # Elasticsearch / OpenSearch
    "/services/collector", "/services/collector/event", "/services/collector/raw", "/services/collector/health",
    "/services/collector/health/1.0",  # Splunk HEC
    "/v2/enqueue",  # PagerDuty Events API v2 (the routing key travels in the body)
})  # fmt: skip
"""Fixed paths the pipeline itself builds on any host, no credential in them: kept readable when the
URL has no query (``POST http://es:9200/_bulk failed`` rather than a fingerprint)."""


def validate_hosts(hosts: Iterable[str]) -> list[str]:
    """Lower-cased host names (``example.com`` or ``*.example.com``) for :func:`set_url_path_hosts`.

    Raises:
        ValueError: an entry is not a bare host name (no scheme, port, path or userinfo).
    """
    out = []
    for host in hosts:
        h = str(host).strip().lower()
        if not _HOST.match(h):
            raise ValueError(f"{host!r} is not a bare host name (e.g. 'api.example.com' or '*.example.com')")
        out.append(h)
    return out


def set_url_path_hosts(hosts: Iterable[str]) -> None:
    """Hosts whose URL paths are not secret: their paths stay readable in records.

    Raises:
        ValueError: an entry is not a bare host name.
    """
    new = frozenset(validate_hosts(hosts))
    if new != _STATE["hosts"]:
        _STATE["hosts"] = new
        registry.bump()  # strings found clean under the old list may not be clean under the new one


def url_path_hosts() -> frozenset[str]:
    """The current allowlist."""
    return _STATE["hosts"]


def _path_allowed(host: str) -> bool:
    hosts = _STATE["hosts"]
    if not hosts:
        return False
    if host in hosts:
        return True
    parts = host.split(".")
    return any("*." + ".".join(parts[i:]) in hosts for i in range(1, len(parts)))


def redact_url(url: str) -> str:
    """``url`` with userinfo and fragment dropped and path + query fingerprinted (see the module doc).

    Text that is not a ``scheme://`` URL is returned unchanged; a URL that cannot be parsed
    becomes ``<redacted>``.
    """
    if "://" not in url:
        return url
    try:
        parts = split_url(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    # urlsplit leaves ``;params`` in the path; the fragment is dropped whatever it holds
    path, query = parts.path, parts.query
    base = f"{parts.scheme.lower()}://{netloc}"
    if _path_allowed(host):
        tail = path.split(";", 1)[0]
        rest = path[len(tail) :] + (f"?{query}" if query else "")
        return base + tail + (f"/{fingerprint_secret(rest)}" if rest else "")
    secret_part = path + (f"?{query}" if query else "")
    if secret_part in PUBLIC_PATHS or secret_part == "" or _FINGERPRINT_PATH.match(secret_part):
        # nothing left, a fixed public path with no query, or already redacted
        return base + secret_part
    return f"{base}/{fingerprint_secret(secret_part)}"


_PCT_URL_IN_TEXT = re.compile(
    r"(?i)\b[a-z][a-z0-9+.-]{1,15}%3A%2F%2F(?=[^\s\"'<>&]|<redacted>)[^\s\"'<>&]*(?:<redacted>[^\s\"'<>&]*)*"
)
_PCT2_URL_IN_TEXT = re.compile(
    r"(?i)\b[a-z][a-z0-9+.-]{1,15}%253A%252F%252F(?=[^\s\"'<>&]|<redacted>)[^\s\"'<>&]*(?:<redacted>[^\s\"'<>&]*)*"
)
"""A URL percent-encoded twice (``https%253A%252F%252F…``): in a query of a URL itself carried in a query."""
_JSON_URL_IN_TEXT = re.compile(
    r"(?i)\b[a-z][a-z0-9+.-]{1,15}:\\/\\/(?=[^\s\"'<>]|<redacted>)[^\s\"'<>]*(?:<redacted>[^\s\"'<>]*)*"
)


def has_url(text: str) -> bool:
    """Whether ``text`` may hold a URL: ``://``, its percent-encoded form (once or twice, escapes in any
    case) or its JSON-escaped form (``:\\/\\/``)."""
    if "://" in text or ":\\/\\/" in text:
        return True
    return "%" in text and ("%3a%2f%2f" in (low := text.lower()) or "%253a%252f%252f" in low)


def redact_urls_in(text: str) -> str:
    """Every ``scheme://…`` URL inside free text passed through :func:`redact_url`, also when it is
    percent-encoded (``https%3A%2F%2Fhooks…``, a URL carried in a query; ``%253A%252F%252F`` when
    encoded twice) or JSON-escaped
    (``https:\\/\\/hooks…``, as PHP and some JavaScript encoders write it); those keep their encoding."""
    if ":\\/\\/" in text:
        text = _JSON_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0).replace("\\/", "/")).replace("/", "\\/"), text)
    if "%" in text:
        low = text.lower()
        if "%253a%252f%252f" in low:
            text = _PCT2_URL_IN_TEXT.sub(
                lambda m: quote(quote(redact_url(unquote(unquote(m.group(0)))), safe=""), safe=""), text
            )
        if "%3a%2f%2f" in low:
            text = _PCT_URL_IN_TEXT.sub(lambda m: quote(redact_url(unquote(m.group(0))), safe=""), text)
    if "://" not in text:
        return text
    if text.startswith(("http://", "https://")) and not any(c.isspace() for c in text):
        return redact_url(text)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


HOOK_PATHS = (
    r"hooks\.slack\.com/(?:services|workflows|triggers)/",  # Slack incoming webhooks, Workflow Builder triggers
    r"hooks\.zapier\.com/hooks/",  # Zapier catch hooks
    r"hook\.(?:[a-z0-9-]+\.)?(?:make|integromat)\.com/",  # Make (Integromat): hook.eu1.make.com/<token>
    r"events\.(?:eu\.)?pagerduty\.com/(?:integration|generic)/",  # Events API v1: the integration key is the path
    r"(?:[a-z0-9-]+\.)?discord(?:app)?\.com/api/webhooks/",  # Discord: /api/webhooks/<id>/<token>
    r"[a-z0-9-]+\.webhook\.office\.com/webhookb2/",  # Microsoft Teams incoming webhooks
    r"outlook\.office(?:365)?\.com/webhook/",
)
"""Hosts and path starts of webhook services whose hook URL *is* the credential, recognised without a scheme."""
_BARE_HOOK = re.compile(r"(?i)(?<![\w.%\\-])(?:" + "|".join(HOOK_PATHS).replace("/", r"\\?/") + r")[^\s\"'<>]*")
"""A hook URL written without a scheme, plain or JSON-escaped (``hooks.slack.com\\/services\\/…``); after
an ``@``, its userinfo (:func:`_userinfo_start`) goes with it."""
_BARE_HOOK_PCT = re.compile(
    r"(?i)(?:(?<![\w.@%\\-])|(?<=%40))(?:" + "|".join(HOOK_PATHS).replace("/", "%2F") + r")[^\s\"'<>&]*"
)
"""A hook URL written without a scheme, percent-encoded (``?url=hooks.slack.com%2Fservices%2F…``); after
``%40`` (an encoded ``@``), its userinfo goes with it."""
_USERINFO_STOP = frozenset("\"'<>/?#\\")
_USERINFO_STOP_PCT = frozenset("\"'<>/?#\\&=")
_PCT_STOP = frozenset({"2F", "3F", "23", "5C"})
"""Escapes (``/ ? # \\``) a percent-encoded userinfo cannot hold."""
_HOOK_HOSTS = ("slack.com", "zapier.com", "make.com", "integromat.com", "pagerduty.com", "discord", "office")
"""A word of every :data:`HOOK_PATHS` host (lower case): text holding none of them skips the pattern."""
_PROTOCOL_RELATIVE = re.compile(
    r"(?i)(?<![\w:/.@%\\-])//(?P<userinfo>(?:[^\s\"'<>/?#\\]|<redacted>)*@)?"
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"\.[a-z]{2,63}(?::[0-9]{1,5})?(?(userinfo)|(?=[/?#]))[^\s\"'<>]*(?:<redacted>[^\s\"'<>]*)*"
)
"""``//host.tld/…``: a host name with a dot and a letter TLD (``//`` in prose, or a UNC path
``//server/share``, is not one); with userinfo (``//user:pass@host.tld``), also without a path."""


def _bare(prefix: str, url: str) -> str:
    """``url`` (``prefix`` + host + path, no scheme) through :func:`redact_url`, the prefix kept."""
    out = redact_url("https://" + url[len(prefix) :])
    return prefix + out[len("https://") :] if out.startswith("https://") else out


def _bare_hook(url: str) -> str:
    """:func:`_bare` for a hook URL, plain or JSON-escaped (kept so)."""
    if "\\/" not in url:
        return _bare("", url)
    return _bare("", url.replace("\\/", "/")).replace("/", "\\/")


def _userinfo_start(text: str, at: int, pct: bool) -> int:
    """Where the userinfo ending at ``text[at]`` (its ``@``, or ``%40`` when ``pct``) starts: back to a
    space, quote or ``<>/?#\\`` (when ``pct`` also ``&``, ``=`` and their escapes ``%2F``, ``%3F``,
    ``%23``, ``%5C``), over any ``<redacted>``. The user name (before the first ``:``) holds no ``=`` or
    ``&``, so ``url=u:p@hooks…`` keeps ``url=``; the password keeps whatever it holds.

    A scan back from each hook found, linear in the text (a pattern with an optional userinfo before
    the hook would be tried again at every ``:`` of a long run).
    """
    stop = _USERINFO_STOP_PCT if pct else _USERINFO_STOP
    i = at
    while i > 0:
        c = text[i - 1]
        if c == ">" and text.endswith(REDACTED, 0, i):
            i -= len(REDACTED)
        elif c == "%" and pct:
            if text[i : i + 2].upper() in _PCT_STOP:
                return i + 2
            i -= 1
        elif c in stop or c.isspace():
            break
        else:
            i -= 1
    if pct:
        return i
    user = text[i:at].split(":", 1)[0]
    return i + max(user.rfind("="), user.rfind("&")) + 1


def _sub_hooks(pattern: re.Pattern[str], text: str, pct: bool) -> str:
    """``text`` with every ``pattern`` match (and the userinfo before it, :func:`_userinfo_start`) as
    :func:`redact_url` leaves it, scheme-less; percent-encoded again when ``pct``."""
    at = "%40" if pct else "@"
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        start = m.start()
        if text.endswith(at, 0, start):
            start = max(pos, _userinfo_start(text, start - len(at), pct))
        url = text[start : m.end()]
        out += [text[pos:start], quote(_bare("", unquote(url)), safe="") if pct else _bare_hook(url)]
        pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def redact_bare_urls(text: str) -> str:
    """URLs written without a scheme whose path is a credential, as :func:`redact_url` leaves them
    (the host kept, path and query fingerprinted, the same fingerprint as with ``https://``):

    * a protocol-relative URL, ``//host.tld/path?query`` → ``//host.tld/sha256:…``;
    * a webhook service's hook URL (:data:`HOOK_PATHS`), ``hooks.slack.com/services/T/B/x`` →
      ``hooks.slack.com/sha256:…``, also JSON-escaped or percent-encoded (kept so).
    """
    if "/" not in text and "%2" not in text:  # no path, plain or percent-encoded (%2F, %2f)
        return text
    if "//" in text and "//" in text.replace("://", ""):  # a ``//`` that is no scheme's
        text = _PROTOCOL_RELATIVE.sub(lambda m: _bare("//", m.group(0)), text)
    low = text.lower()
    if not any(host in low for host in _HOOK_HOSTS):
        return text
    if ".com/" in low or ".com\\/" in low:
        text = _sub_hooks(_BARE_HOOK, text, pct=False)
    if ".com%2f" in low:
        text = _sub_hooks(_BARE_HOOK_PCT, text, pct=True)
    return text
