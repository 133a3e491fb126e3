"""Rotating a webhook secret in a running `instantly-audit run --role webhook` with SIGHUP, no restart."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OLD = "old-secret-value-0123456789abcdef"
NEW = "new-secret-value-fedcba9876543210"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _post(port: int, secret: str, n: int) -> int:
    body = orjson.dumps(
        {"event_type": "reply_received", "timestamp": "2026-11-27T10:00:00.000Z", "workspace": "ws-1", "n": n}
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{port}/hooks/crm",
            data=body,
            headers={"Content-Type": "application/json", "X-Webhook-Secret": secret},
        ) as r,
    ):
        return r.status


async def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "receiver exited"
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("receiver not ready")


OTHER_ROLES = {
    "workspaces": {"acme": {"api_key_file": "/run/secrets/instantly-api-key"}},
    "sinks": {"siem": {"type": "splunk_hec", "url": "https://splunk.example:8088", "token": "${HEC_TOKEN_UNSET}"}},
}
"""What a shared config holds for the other roles, whose secrets the webhook pod does not mount."""


@pytest.mark.parametrize("others", [{}, OTHER_ROLES], ids=["webhook-only", "shared-config"])
async def test_sighup_rotates_secrets_without_restart(tmp_path: Path, others: dict[str, Any]) -> None:
    """old only → [old, new] → new only, each applied by SIGHUP: nothing valid is rejected, the retired one is.

    With a config shared by every role (docs/operations.md: each pod mounts only its own Secret), the
    reload reads only the webhook section's secrets, as the start did: it used to read them all and
    refuse the reload (``Reload refused; keeping the current secrets``) for the Instantly key file the
    webhook pod does not have, so the new secret got 401."""
    port = _free_port()
    secrets = tmp_path / "hook_secret"
    secrets.write_text(OLD + "\n")
    cfg = {
        "bus": {"type": "sqlite", "path": str(tmp_path / "bus.db")},
        "service": {"enabled": False},
        "logging": {"format": "json"},
        "webhook": {
            "host": "127.0.0.1",
            "port": port,
            "sources": {"crm": {"workspace_id": "ws-1", "secrets_file": str(secrets)}},
        },
        **others,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - the process under test
        [sys.executable, "-m", "pipeline.cli.main", "run", "--config", str(path), "--role", "webhook"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await _wait_ready(port, proc)
        assert await _post(port, OLD, 1) == 200
        assert await _post(port, NEW, 2) == 401
        secrets.write_text(f"{OLD}\n{NEW}\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert await _post(port, OLD, 3) == 200
        assert await _post(port, NEW, 4) == 200
        secrets.write_text(NEW + "\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert await _post(port, NEW, 5) == 200
        assert await _post(port, OLD, 6) == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    text = out.decode()
    assert "Reloaded webhook secrets" in text and "Reload refused" not in text
    assert OLD not in text and NEW not in text
