"""When is the broker ready: every client listener answers the Kafka protocol.

PLAINTEXT and SSL (TLS verified against the test CA) must return Metadata that lists this node
and cluster id; SASL_PLAINTEXT and SASL_SSL must answer ApiVersions.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

from .errors import BrokerError, BrokerStartError
from .info import BrokerInfo
from .process import log_tail, pid_is_broker
from .wire import probe


def _client_ssl_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


def check_ready(info: BrokerInfo, timeout: float = 5.0) -> None:
    """Raise unless every client listener of ``info`` answers the Kafka protocol.

    PLAINTEXT and SSL must return Metadata listing this node (and the expected
    cluster id); SASL_PLAINTEXT and SASL_SSL must answer ApiVersions.

    Raises:
        OSError: a listener does not answer (``ssl.SSLError`` if TLS fails).
        BrokerError: an answer is wrong or does not list this broker yet.
    """
    ctx = _client_ssl_context(info.ssl_cafile)
    for name, use_ssl, with_meta in (
        ("PLAINTEXT", False, True),
        ("SSL", True, True),
        ("SASL_PLAINTEXT", False, False),
        ("SASL_SSL", True, False),
    ):
        port = info.ports[name]
        result = probe(
            info.host,
            port,
            timeout=timeout,
            ssl_context=ctx if use_ssl else None,
            metadata=with_meta,
        )
        if with_meta:
            if not any(node == info.node_id and bport == port for node, _h, bport in result.brokers):
                raise BrokerError(f"{name}: metadata does not list this broker yet: {result.brokers}")
            if result.cluster_id != info.cluster_id:
                raise BrokerError(f"{name}: cluster id {result.cluster_id} != {info.cluster_id}")


def wait_ready(info: BrokerInfo, log_offset: int, deadline: float) -> None:
    """Probe every 0.25 s until ``check_ready`` passes.

    Raises:
        BrokerStartError: the process exited, or ``deadline`` (monotonic) passed; with the log's tail.
    """
    log_file = Path(info.log_file)
    last_error = "no attempt yet"
    while True:
        if not pid_is_broker(info.pid, Path(info.state_dir)):
            raise BrokerStartError(
                f"broker process {info.pid} exited before it was ready; log tail "
                f"({log_file}):\n{log_tail(log_file, log_offset)}"
            )
        try:
            check_ready(info, timeout=5.0)
            return
        except (OSError, BrokerError, ssl.SSLError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise BrokerStartError(
                f"broker {info.pid} not ready within the deadline (last probe: {last_error}); "
                f"log tail ({log_file}):\n{log_tail(log_file, log_offset)}"
            )
        time.sleep(0.25)
