"""A tiny Kafka wire-protocol client: ApiVersions v0 and Metadata v1..v8 over one socket.

Enough to tell whether a listener (plain or TLS) really serves Kafka, without a client library.
No SASL authentication: on SASL listeners only ApiVersions is allowed before it.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import struct
from typing import Any

from .errors import BrokerError

_API_VERSIONS = 18
_METADATA = 3
_CLIENT_ID = "broker.py-probe"


def _kstr(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


class _Reader:
    """Reads big-endian Kafka primitives from one response body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise BrokerError("truncated Kafka response")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def int8(self) -> int:
        return int(self.take(">b")[0])

    def int16(self) -> int:
        return int(self.take(">h")[0])

    def int32(self) -> int:
        return int(self.take(">i")[0])

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> _Reader:
    header = struct.pack(">hhi", api_key, version, corr) + _kstr(_CLIENT_ID)
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    reader = _Reader(_recv_exact(sock, size))
    if reader.int32() != corr:
        raise BrokerError("correlation id mismatch in Kafka response")
    return reader


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What a protocol probe saw: supported API ranges and (if asked) metadata."""

    api_versions: dict[int, tuple[int, int]]
    brokers: list[tuple[int, str, int]]
    cluster_id: str | None
    controller_id: int | None


def probe(
    host: str,
    port: int,
    *,
    timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    metadata: bool = True,
) -> ProbeResult:
    """Speak the Kafka protocol to one listener (no SASL authentication).

    Sends ApiVersions v0 and, with ``metadata``, a Metadata request (highest
    of v1..v8 that the broker supports, no topics) and returns the broker list.

    Raises:
        OSError: the listener refuses, resets or times out (``ssl.SSLError`` for TLS failures).
        BrokerError: the answer is an error, truncated, or has no usable Metadata version.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
        try:
            sock.settimeout(timeout)
            reader = _request(sock, _API_VERSIONS, 0, 1, b"")
            error = reader.int16()
            apis: dict[int, tuple[int, int]] = {}
            for _ in range(reader.int32()):
                key, low, high = reader.take(">hhh")
                apis[int(key)] = (int(low), int(high))
            if error != 0:
                raise BrokerError(f"ApiVersions error code {error}")
            brokers: list[tuple[int, str, int]] = []
            cluster_id: str | None = None
            controller_id: int | None = None
            if metadata:
                brokers, cluster_id, controller_id = _metadata(sock, apis)
            return ProbeResult(apis, brokers, cluster_id, controller_id)
        finally:
            if sock is not raw:
                sock.close()


def _metadata(
    sock: socket.socket, apis: dict[int, tuple[int, int]]
) -> tuple[list[tuple[int, str, int]], str | None, int | None]:
    """Metadata for no topics at the highest version of v1..v8 the broker supports."""
    low, high = apis.get(_METADATA, (0, -1))
    usable = [v for v in range(1, 9) if low <= v <= high]
    if not usable:
        raise BrokerError(f"broker supports Metadata v{low}..v{high}, probe needs 1..8")
    version = max(usable)
    body = struct.pack(">i", 0)  # empty topic list: brokers only
    if version >= 4:
        body += struct.pack(">b", 0)
    if version >= 8:
        body += struct.pack(">bb", 0, 0)
    reader = _request(sock, _METADATA, version, 2, body)
    if version >= 3:
        reader.int32()  # throttle_time_ms
    brokers: list[tuple[int, str, int]] = []
    for _ in range(reader.int32()):
        node = reader.int32()
        bhost = reader.string() or ""
        bport = reader.int32()
        reader.string()  # rack
        brokers.append((node, bhost, bport))
    cluster_id: str | None = None
    if version >= 2:
        cluster_id = reader.string()
    controller_id = reader.int32()
    return brokers, cluster_id, controller_id
