"""The HTTP plumbing every HTTP sink shares: options, one aiohttp session, errors without secrets.

* :class:`HttpSinkConfig` adds ``url``, timeouts and TLS options (``ca_file``,
  ``client_cert_file``, ``client_key_file``: paths, not secret files) to :class:`SinkConfig`.
  A URL with credentials (``https://user:pass@host``) or a query string is refused: secrets
  belong in ``Secret`` fields, where they are masked. ``tls_verify: false`` and a credential
  over ``http://`` are refused unless ``allow_insecure: true`` (:mod:`pipeline.config.transport`).
* :class:`HttpClient` owns one ``ClientSession`` (connection pooling, timeouts, TLS) and
  turns every transport failure into a retriable :class:`SinkError` whose message holds
  the method, the redacted URL, the cause in plain words (:func:`transport_cause`: refused,
  DNS, TLS…) and the exception's class name — never a header, a query string or the
  exception's text. aiohttp errors are converted *outside* their ``except``
  block, so they are neither the cause nor the context of what we raise (aiohttp puts
  request headers, ``Authorization`` included, into some of its errors).
* :func:`parse_retry_after` reads ``Retry-After`` as delta-seconds or an HTTP date.
* :func:`request_body` joins (and gzips) a request body, in a thread when it is large.
* :func:`record_time` gives a record's own time (an event's ``time``, an alert's
  ``last_seen``) in epoch seconds, quickly, for destinations that index by time.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from multidict import CIMultiDict
from pydantic import Field, ValidatorFunctionWrapHandler, field_validator, model_validator

from pipeline import __version__
from pipeline.clock import SYSTEM_CLOCK, Clock, parse_time
from pipeline.config.tls import TlsFiles, tls_context
from pipeline.config.transport import checked_url, plaintext_url, refuse_unless_allowed
from pipeline.delivery.backoff import MAX_RETRY_AFTER_SECS
from pipeline.delivery.base import Delivery, SinkConfig
from pipeline.errors import BackpressureError, SinkError
from pipeline.observability.logs import redact_text

USER_AGENT = f"instantly-audit/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HttpSinkConfig(SinkConfig):
    """Options shared by the HTTP sinks."""

    url: str = Field(description="base URL of the destination, e.g. https://splunk.example.com:8088")
    request_timeout_secs: float = Field(30.0, gt=0)
    connect_timeout_secs: float = Field(10.0, gt=0)
    tls_verify: bool = True
    ca_file: Path | None = Field(None, description="CA bundle (PEM) for the server certificate (default: system CAs)")
    client_cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    client_key_file: Path | None = Field(None, description="client private key (PEM); default: in client_cert_file")
    allow_insecure: bool = Field(False, description="accept tls_verify: false or a credential over http://")
    max_connections: int = Field(8, ge=1, le=256)

    CREDENTIAL_FIELDS: ClassVar[tuple[str, ...]] = ()
    tls_files: ClassVar[TlsFiles] = TlsFiles("ca_file", "client_cert_file", "client_key_file")
    """The sink's fields whose value travels with each request (a token, a key, a signing secret)."""

    def insecure_transport(self) -> list[str]:
        """What is insecure about this destination (empty: nothing)."""
        out = []
        if not self.tls_verify:
            out.append("tls_verify: false turns certificate verification off")
        if plaintext_url(self.url) and any(getattr(self, f, None) is not None for f in self.CREDENTIAL_FIELDS):
            out.append(f"{'/'.join(self.CREDENTIAL_FIELDS)} would travel over plain http://")
        return out

    @model_validator(mode="after")
    def _transport(self) -> HttpSinkConfig:
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        refuse_unless_allowed(self.insecure_transport(), self.allow_insecure)
        return self

    @field_validator("url", mode="wrap")
    @classmethod
    def _check_url(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return checked_url(v, handler, "https://siem.example.com:8088", credentials="use the sink's secret fields")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None.

    A date in the past gives 0; garbage gives None; anything is clamped to one hour.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECS)


_MINUTES: dict[str, float] = {}


def epoch_seconds(text: str) -> float:
    """RFC 3339 text to epoch seconds; ``YYYY-MM-DDTHH:MM:SS[.fff]Z`` (what the pipeline writes) is fast.

    Raises:
        ValueError: not a timestamp.
    """
    if len(text) >= 20 and text[-1] == "Z" and text[16] == ":":
        minute = _MINUTES.get(text[:16])
        if minute is None and text[4] == text[7] == "-" and text[10] == "T" and text[13] == ":":
            try:
                minute = datetime.strptime(text[:16], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()
            except ValueError:
                minute = None
            else:
                if len(_MINUTES) > 65_536:
                    _MINUTES.clear()
                _MINUTES[text[:16]] = minute
        secs = text[17:-1]
        if minute is not None and secs[:2].isdigit() and secs[:2] < "61":
            frac = secs[2:]
            if not frac or (frac[0] == "." and frac[1:].isdigit()):
                return minute + float(secs)
    return parse_time(text)


def record_time(d: Delivery) -> tuple[float, str | None]:
    """Epoch seconds of an event's ``time`` / an alert's ``last_seen``, and that text if it was valid.

    Falls back to the bus timestamp (and None) when the field is missing or not a timestamp.
    """
    value = d.body.get("time" if d.kind == "event" else "last_seen")
    if isinstance(value, str):
        try:
            return epoch_seconds(value), value
        except ValueError:
            pass
    return d.record.timestamp_ms / 1000.0, None


_MINUTE_INTS: dict[str, int] = {}


def millis_time(value: object) -> tuple[int, str] | None:
    """For the pipeline's own ``YYYY-MM-DDTHH:MM:SS.fffZ`` (ASCII, from 1970 on): whole epoch seconds and ``fff``.

    What :func:`epoch_seconds` reads from that text (it returns ``secs + int(fff) / 1000``),
    without floats; None for any other text, which callers give to :func:`record_time`.
    """
    if type(value) is not str or len(value) != 24 or value[19] != "." or value[23] != "Z" or not value.isascii():
        return None
    minute = _MINUTE_INTS.get(value[:17])
    if minute is None:
        minute = -1
        if value[4] == value[7] == "-" and value[10] == "T" and value[13] == value[16] == ":":
            try:
                t = datetime.strptime(value[:16], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()
            except ValueError:
                pass
            else:
                minute = int(t) if t >= 0 and t == int(t) else -1
        if len(_MINUTE_INTS) > 65_536:
            _MINUTE_INTS.clear()
        _MINUTE_INTS[value[:17]] = minute
    secs, frac = value[17:19], value[20:23]
    if minute < 0 or not secs.isdigit() or secs >= "60" or not frac.isdigit():
        return None
    return minute + int(secs), frac


COMPRESS_IN_THREAD_BYTES = 2 * 1024 * 1024
"""Bodies this large are gzipped in a thread (keeping the event loop, other sinks, responsive);
below it a thread hop (GIL hand-over) costs more than gzip -3."""


async def request_body(parts: Sequence[bytes], *, gzip_level: int | None) -> bytes:
    """``parts`` joined, gzipped at ``gzip_level`` unless it is None (``mtime=0``: same bytes for a retry)."""
    data = b"".join(parts)
    if gzip_level is None:
        return data
    if len(data) >= COMPRESS_IN_THREAD_BYTES:
        return await asyncio.to_thread(gzip.compress, data, gzip_level, mtime=0)
    return gzip.compress(data, gzip_level, mtime=0)


def redact_url(url: str) -> str:
    """``url`` without credentials, query string or fragment (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read response."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    retry_after: float | None = None

    def json(self, what: str) -> Any:
        """The body parsed as JSON.

        Raises:
            SinkError: (retriable) the body is not JSON.
        """
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise SinkError(f"{what}: HTTP {self.status} with a body that is not JSON", retriable=True) from None

    def text(self, limit: int = 300) -> str:
        """The start of the body as text, for error messages: redacted (:func:`upstream_text`).

        Destinations echo what they were sent (``invalid token Splunk <token>``, ``ApiKey <key>``,
        the request URL): the body is never put into a message as-is.
        """
        snippet = upstream_text(self.body[: limit + _REDACT_MARGIN].decode("utf-8", "replace").strip(), limit)
        return snippet + ("…" if len(self.body) > limit else "")


def upstream_text(text: str, limit: int | None = None) -> str:
    """Text a destination chose (a body, a JSON ``text``/``reason`` field) fit for an error message.

    The log redaction (registered secrets in every form, credential shapes, URLs) runs before the
    cut at ``limit`` characters, so a secret straddling the cut is not left half-shown: every HTTP
    sink quotes upstream text through here.
    """
    if limit is None:
        return redact_text(text)
    return redact_text(text[: limit + _REDACT_MARGIN])[:limit]


_REDACT_MARGIN = 1024
"""Characters past a cut that are redacted with the text (a secret straddling the cut is recognised whole)."""


def ssl_context(cfg: HttpSinkConfig, where: str = "sinks.<sink>") -> ssl.SSLContext | bool:
    """The TLS setting for ``cfg``: False (no verification), a context with ``ca_file`` and the
    client certificate, or True (system CAs). ``where`` is the block's key path (``sinks.<id>``).

    Raises:
        ConfigError: a CA or certificate file cannot be loaded (the message names the key path and
            the file, :func:`pipeline.config.tls.tls_context`).
    """
    if not cfg.tls_verify and cfg.client_cert_file is None:
        return False
    if cfg.ca_file is None and cfg.client_cert_file is None:
        return True
    ctx = tls_context(
        where,
        ca=("ca_file", cfg.ca_file),
        cert=("client_cert_file", cfg.client_cert_file),
        key=("client_key_file", cfg.client_key_file),
    )
    if not cfg.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class HttpClient:
    """One pooled session to one destination; use as ``async with``."""

    def __init__(
        self,
        cfg: HttpSinkConfig,
        *,
        name: str,
        headers: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        where: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.where = where or f"sinks.{name.rsplit(' ', 1)[-1]}"
        """The config key path of the block (``sinks.<id>``), named by a TLS file error."""
        self.base_url = cfg.url
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0

    async def __aenter__(self) -> HttpClient:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=self.cfg.request_timeout_secs, sock_connect=self.cfg.connect_timeout_secs
            )
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.cfg, self.where), limit=self.cfg.max_connections)
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=timeout, connector=connector, trust_env=False
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def is_open(self) -> bool:
        """True between ``__aenter__`` and ``__aexit__``."""
        return self._session is not None

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> HttpResponse:
        """Send one request to ``base_url + path`` and read the whole response (any status).

        Raises:
            SinkError: (retriable) the request timed out or the connection failed; or
                (not retriable) the client is not open.
        """
        if self._session is None:
            raise SinkError(f"{self.name}: the HTTP client is not open (use 'async with')")
        url = self.base_url + path
        failure: SinkError | None = None
        self.requests += 1
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, params=params, allow_redirects=False
            ) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    body += chunk
                    if len(body) > max_response_bytes:
                        break
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
                return HttpResponse(resp.status, CIMultiDict(resp.headers), bytes(body), retry_after)
        except TimeoutError:
            failure = SinkError(
                f"{self.name}: {method} {redact_url(url)} timed out after {self.cfg.request_timeout_secs:g}s",
                retriable=True,
            )
        except (aiohttp.ClientError, OSError) as err:
            what = f"{self.name}: {method} {redact_url(url)}"
            failure = SinkError(f"{what} failed: {transport_cause(err, url)} ({type(err).__name__})", retriable=True)
        # Raised outside the except block: the aiohttp error is neither the cause nor the context.
        raise failure


def transport_cause(err: BaseException, url: str) -> str:
    """Why a request got no answer, in plain words naming the host (never a header, a query or the
    exception's own text, which may hold them): refused, DNS, TLS, or the OS's reason."""
    parts = urlsplit(url)
    host = parts.hostname or "the host"
    where = f"{host}:{parts.port}" if parts.port else host
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {where} was not accepted (ca_file, or tls_verify)"
    if isinstance(err, aiohttp.ClientSSLError):
        reason = getattr(getattr(err, "os_error", None), "reason", None)
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"the TLS handshake with {where} failed: it answers plain HTTP (use http://, or its TLS port)"
        return f"the TLS handshake with {where} failed" + (f" ({reason})" if isinstance(reason, str) else "")
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host {host}"
    if isinstance(err, aiohttp.ClientConnectorError):
        if isinstance(err.os_error, ConnectionRefusedError):
            return f"{where} refused the connection (nothing listens there?)"
        return f"cannot connect to {where}" + (f" ({err.os_error.strerror})" if err.os_error.strerror else "")
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection without answering"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return "the request failed"


def status_error(name: str, what: str, resp: HttpResponse, detail: str = "") -> SinkError:
    """The :class:`SinkError` for an unexpected status: 429/5xx/408 retriable, others not."""
    retriable = resp.status in (408, 425, 429) or resp.status >= 500
    text = f"{name}: {what}: HTTP {resp.status}" + (f" ({detail})" if detail else "")
    if resp.status in (429, 503):
        return BackpressureError(text, retry_after=resp.retry_after)
    return SinkError(text, retriable=retriable, retry_after=resp.retry_after)
