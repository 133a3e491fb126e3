"""Insecure transports: refused at config validation unless the block says ``allow_insecure: true``.

A destination is *insecure* when

* TLS verification is off (``tls_verify: false``, syslog ``tls.verify: false``), or
* a credential would travel in plaintext: an ``http://`` URL for a sink that sends a token, a
  key, a password or a signing secret (Splunk HEC, Elasticsearch with auth, the signed webhook,
  PagerDuty, Slack), ``http://`` Vault, or syslog without ``tls:``.

Loopback destinations (``localhost``, ``127.0.0.0/8``, ``::1``) are exempt: the traffic never
leaves the host (a sidecar, a test fake). An accepted insecure destination is logged at WARNING
when the sink is built (:func:`warn_insecure`), every start.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidatorFunctionWrapHandler

from pipeline.config.base import is_unresolved

log = logging.getLogger("instantly_audit.transport")

ALLOW_HINT = "set allow_insecure: true on this block to accept it (logged as a warning at every start)"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if not host:
        return False
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def clean_http_url(value: str, example: str, *, credentials: str = "use the block's secret fields") -> str:
    """``value`` checked as an http(s) base URL with no userinfo, query or fragment; trailing ``/`` dropped.

    Sinks, the OTLP endpoint, Vault and Instantly ``base_url`` share it: a URL is logged and shown in
    errors (as scheme, host and port at most), so it must hold no credential. No message quotes
    ``value`` or a part of it (the port too: ``http://h:<secret>`` is a typo away).

    Raises:
        ValueError: the problem, in words (pydantic turns it into a config error naming the key).
    """
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"must be an http(s) URL such as {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value.strip()):
        raise ValueError(f"must be an http(s) URL such as {example}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"must not carry credentials; {credentials}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must not carry a query string or fragment")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def checked_url(value: Any, handler: ValidatorFunctionWrapHandler, example: str, *, credentials: str) -> Any:
    """:func:`clean_http_url` for a ``mode="wrap"`` field validator: the placeholder of a reference
    the command does not read (``url: ${SPLUNK_URL}`` under ``config validate --no-environment``)
    passes unchanged, since only the real value can be checked (by the command that reads it)."""
    if is_unresolved(value):
        return value
    return clean_http_url(handler(value), example, credentials=credentials)


def plaintext_url(url: str) -> bool:
    """Whether ``url`` is ``http://`` to a host other than this machine."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.scheme.lower() == "http" and not is_loopback(parts.hostname)


def refuse_unless_allowed(problems: Iterable[str], allow_insecure: bool) -> None:
    """Raise when there are problems and the block did not accept them.

    Raises:
        ValueError: a problem and ``allow_insecure`` is false (pydantic turns it into a config error).
    """
    found = list(problems)
    if found and not allow_insecure:
        raise ValueError(f"insecure transport refused: {'; '.join(found)}; {ALLOW_HINT}")


def warn_insecure(where: str, problems: Iterable[str]) -> None:
    """Log each accepted insecure setting of ``where`` at WARNING."""
    for problem in problems:
        log.warning(
            "INSECURE TRANSPORT accepted by allow_insecure: %s: %s", where, problem, extra={"component": "transport"}
        )
