"""A local stand-in for HashiCorp Vault's KV version 2 HTTP API (enough for ``hvac``'s KV v2 client).

* ``GET /v1/<mount>/data/<path>[?version=N]`` → ``{"data": {"data": {...}, "metadata": {...}}}``;
  404 ``{"errors": []}`` for a missing secret or version (what Vault answers).
* ``POST``/``PUT /v1/<mount>/data/<path>`` with ``{"data": {...}, "options": {"cas": N}}`` →
  ``{"data": {"version": N+1, ...}}``; a check-and-set mismatch answers 400 with Vault's message.
* ``X-Vault-Token`` is required on every request: missing or wrong → 403 ``permission denied``
  (Vault's answer); ``X-Vault-Namespace`` is recorded. Only configured mounts exist (others 404).

It runs :class:`http.server.ThreadingHTTPServer` in a background thread, so blocking callers
(config loading) and ``asyncio.to_thread`` callers both reach it. ``requests`` records what
was asked — method, path, namespace, whether the token matched — never the token itself.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TIME = "2026-11-27T12:00:00.000000Z"


@dataclass
class VaultRequest:
    """One request as the fake saw it (no token value)."""

    method: str
    path: str
    namespace: str | None
    authorized: bool
    status: int = 0


@dataclass
class FakeVault:
    """KV v2 secrets in memory: ``secrets[(mount, path)]`` is the list of versions (dicts)."""

    token: str = "fake-vault-token-3c9e1a"
    mounts: tuple[str, ...] = ("secret",)
    secrets: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[VaultRequest] = field(default_factory=list)
    fail_writes: int = 0
    """Answer the next N writes with 503 (a Vault that is sealed or down)."""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def put(self, mount: str, path: str, data: dict[str, Any]) -> int:
        """Write a new version directly (test set-up); return its number."""
        with self._lock:
            versions = self.secrets.setdefault((mount, path.strip("/")), [])
            versions.append(dict(data))
            return len(versions)

    def current(self, mount: str, path: str) -> dict[str, Any] | None:
        """The latest version's data, or None."""
        with self._lock:
            versions = self.secrets.get((mount, path.strip("/")))
            return dict(versions[-1]) if versions else None

    def start(self) -> FakeVault:
        """Listen on 127.0.0.1 (a free port)."""
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                vault._handle(self, "GET")

            def do_POST(self) -> None:
                vault._handle(self, "POST")

            def do_PUT(self) -> None:
                vault._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), name="fake-vault",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeVault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- protocol -------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        authorized = h.headers.get("X-Vault-Token") == self.token
        req = VaultRequest(method, url.path, h.headers.get("X-Vault-Namespace"), authorized)
        self.requests.append(req)
        status, body = self._answer(h, method, url.path, parse_qs(url.query), authorized)
        req.status = status
        raw = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _answer(
        self, h: BaseHTTPRequestHandler, method: str, path: str, query: dict[str, list[str]], authorized: bool
    ) -> tuple[int, dict[str, Any]]:
        if not authorized:
            return 403, {"errors": ["permission denied"]}
        parts = path.split("/")
        # /v1/<mount>/data/<path...>
        if len(parts) < 5 or parts[1] != "v1" or parts[3] != "data" or parts[2] not in self.mounts:
            return 404, {"errors": []}
        key = (parts[2], "/".join(parts[4:]).strip("/"))
        if method == "GET":
            return self._read(key, query)
        length = int(h.headers.get("Content-Length") or 0)
        try:
            doc = json.loads(h.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            return 400, {"errors": ["failed to parse JSON input"]}
        return self._write(key, doc)

    def _read(self, key: tuple[str, str], query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            versions = self.secrets.get(key)
            if not versions:
                return 404, {"errors": []}
            number = int(query["version"][0]) if "version" in query else len(versions)
            if not 1 <= number <= len(versions):
                return 404, {"errors": []}
            data = dict(versions[number - 1])
        meta = {"created_time": TIME, "custom_metadata": None, "deletion_time": "", "destroyed": False,
                "version": number}  # fmt: skip
        return 200, {"request_id": "fake", "lease_id": "", "renewable": False, "lease_duration": 0,
                     "data": {"data": data, "metadata": meta}, "wrap_info": None, "warnings": None,
                     "auth": None}  # fmt: skip

    def _write(self, key: tuple[str, str], doc: Any) -> tuple[int, dict[str, Any]]:
        if self.fail_writes > 0:
            self.fail_writes -= 1
            return 503, {"errors": ["Vault is sealed"]}
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            return 400, {"errors": ["no data provided"]}
        cas = (doc.get("options") or {}).get("cas")
        with self._lock:
            versions = self.secrets.setdefault(key, [])
            if cas is not None and cas != len(versions):
                return 400, {"errors": ["check-and-set parameter did not match the current version"]}
            versions.append(dict(doc["data"]))
            number = len(versions)
        return 200, {"data": {"created_time": TIME, "custom_metadata": None, "deletion_time": "",
                              "destroyed": False, "version": number}}  # fmt: skip
