"""Syslog sink (type ``syslog``): RFC 5424 messages over TCP or TLS with octet-counted framing.

* Transport: TCP with RFC 6587 octet counting, or TLS per RFC 5425 (``tls:`` block; server
  certificate verified against ``cafile`` or the system store, optional client certificate).
* Body: the record as JSON (``format: native|ecs|ocsf|splunk``, or ``format: json`` with
  ``json_format``, the older spelling) or as a CEF line (``format: cef``). The MSG is UTF-8
  without the BOM RFC 5424 §6.4 asks for (rsyslog keeps a BOM in ``msg``, where it breaks JSON
  and CEF parsing); ``utf8_bom: true`` adds it for collectors that strip it; an SD element
  ``[instantly@32473 id=… type=… workspace=… kind=…]`` carries the stable record id, so a
  collector can de-duplicate replays (an alert's also ``status=open|resolved``).
* PRI severity: an open alert's follows its rule severity (critical 2, high 3, medium 4, low 5,
  info 6); a resolved alert is 5 Notice whatever its rule's severity (the condition is over: a
  ``*.crit`` route must not page on the all-clear); events 6, or 4 for a failure.
* One persistent connection per sink, opened on first use; a task watches it for EOF/reset,
  so a receiver restart while idle is noticed and the next batch reconnects first.

**Delivery guarantee.** Syslog has no application-level acknowledgement. A batch is
confirmed when every byte was handed to the kernel (the asyncio write buffer — including
the TLS layer's — drained to zero). Bytes still in the kernel send buffer or in flight when
the receiver dies are lost without an error: this sink is *at-least-once up to the TCP
send buffer*. A write error fails the whole batch as retriable (the runner resends it, so
a collector may see duplicates, identifiable by the SD ``id``). For an acknowledged
transport use RELP or the Splunk HEC / Elasticsearch sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import Model
from pipeline.config.tls import TlsFiles, tls_context
from pipeline.config.transport import is_loopback, refuse_unless_allowed
from pipeline.delivery.base import Delivery, Failure, SendResult, SinkConfig
from pipeline.errors import SinkError
from pipeline.formats import classify, render_bytes, to_cef
from pipeline.formats.syslog5424 import (
    FACILITIES,
    SEVERITIES,
    SDElement,
    check_header_field,
    check_sd_name,
    format_message,
    frame,
)

_PRIVATE_SD_ID = re.compile(r"^[^@]+@[0-9]+(\.[0-9]+)*$")
_ALERT_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}


class SyslogTlsConfig(Model):
    """TLS for RFC 5425 (``tls: {cafile, certfile, keyfile, verify: true}``)."""

    tls_files: ClassVar[TlsFiles] = TlsFiles("cafile", "certfile", "keyfile")

    cafile: Path | None = Field(None, description="CA bundle for the server certificate (default: system store)")
    certfile: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    keyfile: Path | None = Field(None, description="client private key (PEM); defaults to certfile")
    verify: bool = Field(True, description="verify the server certificate and host name")
    server_name: str | None = Field(None, description="name to verify and send as SNI (default: host)")

    @model_validator(mode="after")
    def _key_needs_cert(self) -> SyslogTlsConfig:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        return self


class SyslogSinkConfig(SinkConfig):
    """Options of the syslog sink."""

    type: Literal["syslog"] = "syslog"
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, description="6514 is the RFC 5425 TLS port")
    tls: SyslogTlsConfig | None = None
    FORMATS: ClassVar[tuple[str, ...]] = ("json", "cef", "native", "ecs", "ocsf", "splunk")
    DEFAULT_FORMAT: ClassVar[str] = "json"

    json_format: Literal["native", "ocsf", "ecs", "splunk"] = Field("native", description="with format: json")
    facility: int = Field(FACILITIES["log_audit"], description="0-23 or a name such as log_audit, auth, local4")
    app_name: str = "instantly-audit"
    hostname: str | None = Field(None, description="HOSTNAME field (default: this machine's name)")
    sd_id: str = Field("instantly@32473", description="SD-ID; 32473 is the documentation enterprise number")
    utf8_bom: bool = Field(
        False,
        description="start MSG with a BOM (RFC 5424 §6.4 asks it of a UTF-8 MSG); off by default: rsyslog "
        "keeps it in msg, which breaks JSON parsing there, and CEF parsers expect 'CEF:' first",
    )
    max_message_bytes: int = Field(8192, ge=480, le=16 * 1024 * 1024, description="larger records go to dead letters")
    connect_timeout_secs: float = Field(10.0, gt=0)
    write_timeout_secs: float = Field(30.0, gt=0)
    allow_insecure: bool = Field(False, description="accept syslog without tls: (plaintext) or tls.verify: false")

    def insecure_transport(self) -> list[str]:
        """What is insecure about this destination (empty: nothing)."""
        if is_loopback(self.host):
            return []
        if self.tls is None:
            return ["syslog without tls: sends every record in plaintext"]
        return [] if self.tls.verify else ["tls.verify: false turns certificate verification off"]

    @model_validator(mode="after")
    def _transport(self) -> SyslogSinkConfig:
        refuse_unless_allowed(self.insecure_transport(), self.allow_insecure)
        return self

    @field_validator("facility", mode="before")
    @classmethod
    def _facility(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.isdigit():
            if v.lower() not in FACILITIES:
                raise ValueError(f"unknown facility (known: {', '.join(FACILITIES)})")
            return FACILITIES[v.lower()]
        if isinstance(v, str | int) and not 0 <= int(v) <= 23:
            raise ValueError("facility must be 0-23")
        return v

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, v: str) -> str:
        return check_header_field("app_name", v)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str | None) -> str | None:
        return None if v is None else check_header_field("hostname", v)

    @field_validator("sd_id")
    @classmethod
    def _sd_id(cls, v: str) -> str:
        check_sd_name(v)
        if not _PRIVATE_SD_ID.match(v):  # RFC 5424 §6.3.2: names without "@" are reserved for IANA
            raise ValueError("must be name@<private enterprise number>, e.g. instantly@32473 (RFC 5424 §6.3.2)")
        return v


def _describe(err: BaseException) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or type(err).__name__}"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return type(err).__name__


class _Connection:
    """One open stream plus a task that notices when the receiver closes or resets it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: asyncio.WriteTransport):
        self.reader = reader
        self.writer = writer
        self.raw = raw  # the TCP transport under TLS: its buffer must drain too
        self.peer_closed = False
        self._watch = asyncio.create_task(self._watch_peer())

    async def _watch_peer(self) -> None:
        try:
            while await self.reader.read(65536):
                pass  # a syslog receiver has nothing to say; ignore anything it sends
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.peer_closed = True

    @property
    def usable(self) -> bool:
        """False once the receiver closed or reset the connection (or we closed it)."""
        return not (
            self.peer_closed or self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None
        )

    async def close(self) -> None:
        self._watch.cancel()
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch


class SyslogSink:
    """Writes events/alerts as RFC 5424 messages to a syslog collector over TCP or TLS."""

    Config: ClassVar[type[SinkConfig]] = SyslogSinkConfig
    type: ClassVar[str] = "syslog"

    def __init__(self, sink_id: str, config: SinkConfig):
        if not isinstance(config, SyslogSinkConfig):
            raise TypeError(f"sinks.{sink_id}: expected a syslog config, got {type(config).__name__}")
        self.sink_id = sink_id
        self.config = config
        self._where = f"{config.host}:{config.port}"
        self._hostname = config.hostname or socket.gethostname()[:255] or "-"
        self._ssl = self._ssl_context(config.tls) if config.tls is not None else None
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self.connects = 0  # how many connections were opened (observability, tests)

    def _ssl_context(self, tls: SyslogTlsConfig) -> ssl.SSLContext:
        ctx = tls_context(
            f"sinks.{self.sink_id}.tls",
            ca=("cafile", tls.cafile),
            cert=("certfile", tls.certfile),
            key=("keyfile", tls.keyfile),
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not tls.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def __aenter__(self) -> SyslogSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._lock:
            await self._drop()

    # ------------------------------------------------------------------ rendering
    def message(self, delivery: Delivery) -> bytes:
        """The RFC 5424 message (unframed) for one delivery.

        Raises:
            TypeError, ValueError, KeyError: the record cannot be formatted.
        """
        body = delivery.body
        cfg = self.config
        fmt = cfg.json_format if cfg.record_format == "json" else cfg.record_format
        if fmt == "cef":
            msg: bytes = to_cef(body).encode("utf-8")
        elif fmt == "native" and delivery.raw[:1] == b"{":
            msg = delivery.raw  # the record exactly as it is on the bus
        else:
            msg = render_bytes(body, fmt)
        status = None
        if delivery.kind == "alert":
            status = "resolved" if body.get("status") == "resolved" else "open"
            severity = (
                SEVERITIES["notice"]
                if status == "resolved"
                else _ALERT_SEVERITY.get(str(delivery.severity), SEVERITIES["informational"])
            )
            when, msgid, type_ = body.get("last_seen"), "alert", str((body.get("rule") or {}).get("id", ""))
        else:
            failed = classify(body).outcome == "failure"
            severity = SEVERITIES["warning"] if failed else SEVERITIES["informational"]
            when, msgid, type_ = body.get("time"), delivery.type, delivery.type
        workspace = str((body.get("workspace") or {}).get("id", ""))
        params = (("id", delivery.id), ("kind", delivery.kind), ("type", type_), ("workspace", workspace),
                  ("status", status))  # fmt: skip
        return format_message(
            facility=cfg.facility,
            severity=severity,
            msg=msg,
            time=when if isinstance(when, str) else None,
            hostname=self._hostname,
            app_name=cfg.app_name,
            msgid=msgid,
            sd=[SDElement(cfg.sd_id, tuple((k, v) for k, v in params if v))],
            bom=cfg.utf8_bom,
        )

    # ------------------------------------------------------------------ connection
    async def _open(self) -> _Connection:
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout_secs):
                reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
                raw = writer.transport
                if self._ssl is not None:
                    assert cfg.tls is not None
                    await writer.start_tls(self._ssl, server_hostname=cfg.tls.server_name or cfg.host)
        except (OSError, ssl.SSLError, TimeoutError) as err:
            raise SinkError(f"syslog {self._where}: cannot connect ({_describe(err)})", retriable=True) from err
        # drain() then waits until the buffer is empty. (Not high=0: asyncio's TLS transport
        # treats "size >= high" as full, so an empty buffer would pause it forever.)
        writer.transport.set_write_buffer_limits(high=1, low=0)
        self.connects += 1
        return _Connection(reader, writer, raw)

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connection(self) -> _Connection:
        for _ in range(2):  # let a pending EOF/reset from the receiver be processed first
            await asyncio.sleep(0)
        if self._conn is not None and not self._conn.usable:
            await self._drop()
        if self._conn is None:
            self._conn = await self._open()
        return self._conn

    async def _write(self, payload: bytes) -> None:
        conn = await self._connection()
        try:
            async with asyncio.timeout(self.config.write_timeout_secs):
                conn.writer.write(payload)
                await conn.writer.drain()
                while conn.raw.get_write_buffer_size() > 0:
                    if conn.raw.is_closing():
                        raise ConnectionResetError("connection closed while writing")
                    await asyncio.sleep(0.005)
        except (OSError, ssl.SSLError, TimeoutError) as err:
            await self._drop()
            raise SinkError(
                f"syslog {self._where}: write failed ({_describe(err)}); the batch will be resent", retriable=True
            ) from err
        if not conn.usable:
            await self._drop()
            raise SinkError(f"syslog {self._where}: the receiver closed the connection", retriable=True)

    # ------------------------------------------------------------------ protocol
    async def send(self, batch: Sequence[Delivery]) -> SendResult:
        """Frame and write the batch; confirmed once every byte left the process.

        Raises:
            SinkError: connecting or writing failed (retriable; the whole batch is resent).
        """
        result = SendResult()
        frames: list[bytes] = []
        for delivery in batch:
            try:
                message = self.message(delivery)
            except (TypeError, ValueError, KeyError) as err:
                result.failures.append(Failure(delivery, f"cannot format as syslog: {err}", retriable=False))
                continue
            if len(message) > self.config.max_message_bytes:
                result.failures.append(
                    Failure(
                        delivery,
                        f"syslog message of {len(message)} bytes exceeds max_message_bytes "
                        f"{self.config.max_message_bytes} (raise it together with the receiver's limit)",
                        retriable=False,
                    )
                )
                continue
            frames.append(frame(message))
        if frames:
            async with self._lock:
                await self._write(b"".join(frames))
        return result

    async def healthcheck(self) -> None:
        """Open a fresh connection (completing the TLS handshake) and close it.

        Raises:
            SinkError: the collector cannot be reached or the TLS handshake failed.
        """
        conn = await self._open()
        await conn.close()
