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
from urllib.parse import urlsplit

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
