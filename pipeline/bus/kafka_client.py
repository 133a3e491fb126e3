"""What every part of the Kafka bus shares: the connection settings, topic naming, error wrapping.

:class:`KafkaConnection` carries the bootstrap servers, the client arguments (TLS, SASL)
built once from the config, the request timeout and the topic prefix that maps logical
topic names to the cluster's. :func:`wrap_error` turns an aiokafka error into a
:class:`BusError` that says whether a retry can help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber, StaleLeaderEpochCodeError
from aiokafka.helpers import create_ssl_context

from pipeline.config.model import KafkaBusConfig
from pipeline.config.tls import loading, no_password
from pipeline.errors import BusError

T = TypeVar("T")
DAY_MS = 86_400_000
PRODUCER_BATCH_BYTES = 512 * 1024  # aiokafka's 16 KiB default caps a batch at ~20 events
FETCH_PARTITION_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the cluster, shared by the admin client, the producers and the consumers."""

    bootstrap: list[str]
    client_args: dict[str, Any] = field(default_factory=dict)
    request_timeout_ms: int = 30_000
    topic_prefix: str = ""

    def phys(self, topic: str) -> str:
        """The cluster's name for a logical topic (``topic_prefix`` + name)."""
        return self.topic_prefix + topic

    def group(self, group: str) -> str:
        """The cluster's name for a consumer group (``topic_prefix`` + name), so two environments
        sharing a cluster under different prefixes never join each other's groups."""
        return self.topic_prefix + group

    def txn_id(self, prefix: str, writer: str) -> str:
        """The transactional id of a writer: ``<transactional_id_prefix>-<topic_prefix><writer>``.

        With the topic prefix in it, two environments on one cluster (``topic_prefix`` ``prod.``
        and ``staging.``, the same ``transactional_id_prefix``) no longer fence each other's
        ``rules`` or poller producers.
        """
        return f"{prefix}-{self.topic_prefix}{writer}"

    def logical(self, topic: str) -> str:
        """The logical name of a cluster topic."""
        p = self.topic_prefix
        return topic[len(p) :] if p and topic.startswith(p) else topic


def client_args_from_config(cfg: KafkaBusConfig) -> dict[str, Any]:
    """aiokafka client arguments (client id, TLS context, SASL) for a validated config."""
    sec = cfg.security
    args: dict[str, Any] = {"client_id": cfg.client_id, "security_protocol": sec.protocol}
    if sec.protocol in ("SSL", "SASL_SSL"):
        files = {"ssl_cafile": sec.ssl_cafile, "ssl_certfile": sec.ssl_certfile, "ssl_keyfile": sec.ssl_keyfile}
        with loading("bus.security", files):  # a failure names the key path and the files
            ctx = create_ssl_context(
                cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
                certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
                keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
                password=no_password,
            )
        ctx.check_hostname = sec.ssl_check_hostname
        if not sec.ssl_check_hostname:
            ctx.verify_mode = ssl.CERT_REQUIRED
        args["ssl_context"] = ctx
    if sec.protocol.startswith("SASL"):
        args["sasl_mechanism"] = sec.sasl_mechanism or "SCRAM-SHA-512"
        args["sasl_plain_username"] = sec.username
        args["sasl_plain_password"] = sec.password.get_secret_value() if sec.password else None
    return args


class BrokerReasons(logging.Handler):
    """While installed on the ``aiokafka`` logger, keeps why each broker connection failed.

    aiokafka logs the cause of a failed bootstrap (``Unable connect to "host:port": [Error 58]
    SaslAuthenticationFailed: … invalid credentials …``) and then raises only ``Unable to
    bootstrap``; :meth:`explain` puts the cause back into the error the user reads.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Unable connect to"):
            self.reasons.append(msg.split(": ", 1)[1].strip() if ": " in msg else "")

    @contextlib.contextmanager
    def installed(self) -> Iterator[BrokerReasons]:
        """Listen on the ``aiokafka`` logger for the duration of the block."""
        logger = logging.getLogger("aiokafka")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)

    def explain(self, err: BusError) -> BusError:
        """``err`` with the broker's last stated reason (or a hint when it gave none)."""
        if not self.reasons:
            return err
        reason = self.reasons[-1]
        said = (
            f"the broker said: {reason}"
            if reason
            else "no reason given: is bus.security.protocol (TLS, SASL) the one this listener speaks?"
        )
        return BusError(f"{err} ({said})", retriable=err.retriable)


def wrap_error(err: BaseException, what: str) -> BusError:
    """A :class:`BusError` for an aiokafka (or network) failure while doing ``what``."""
    retriable = bool(getattr(err, "retriable", False)) or isinstance(
        err, StaleLeaderEpochCodeError | OutOfOrderSequenceNumber | TimeoutError | ConnectionError
    )
    name, text = type(err).__name__, str(err)
    said = text if text.startswith(name) else f"{name}: {text}"  # aiokafka's str() may lead with its class
    return BusError(f"kafka {what} failed: {said}", retriable=retriable)


async def retrying(call: Callable[[], Awaitable[T]], what: str, attempts: int = 40) -> T:
    """Run an admin call, retrying retriable errors (e.g. a coordinator still being created).

    Raises:
        BusError: a non-retriable error, or the last attempt failed.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except KafkaError as err:
            if not getattr(err, "retriable", False) or attempt == attempts:
                raise wrap_error(err, what) from None
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise BusError(f"kafka {what} failed")  # pragma: no cover - loop always returns or raises
