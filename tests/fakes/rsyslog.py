"""A real rsyslogd (Debian ``rsyslog`` + ``rsyslog-gnutls``) on 127.0.0.1 for the syslog sink tests.

:class:`Rsyslog` writes a config into a temporary directory and runs
``rsyslogd -n -f <conf> -i <pidfile>`` in the foreground as a child process:

* ``imtcp`` on a plain TCP port (octet-counted framing is detected per frame), and with
  ``tls=True`` a second ``imtcp`` listener using the ``gtls`` stream driver
  (``streamDriver.mode=1``, anonymous client auth) with a CA and server certificate made by
  the ``openssl`` CLI for ``localhost``/``127.0.0.1``;
* both listeners feed one ruleset whose ``omfile`` action writes one JSON line per message
  with ``rawmsg`` (the message exactly as framed) and rsyslog's own RFC 5424 parse
  (``pri``, ``app-name``, ``procid``, ``msgid``, ``structured-data``, ``msg``);
* control characters are not escaped on reception, so "intact" means byte for byte.

:func:`rsyslogd_path` skips the calling test with a reason when the binary (or the gtls
module) is missing, unless ``CI=true``: then the test fails, so CI cannot silently skip.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("/usr/sbin/rsyslogd", "/sbin/rsyslogd")
MODULE_DIRS = ("/usr/lib/*/rsyslog", "/usr/lib/rsyslog", "/usr/lib64/rsyslog")

_TEMPLATE = """template(name="capture" type="list") {
  constant(value="{\\"raw\\":\\"")       property(name="rawmsg" format="json")
  constant(value="\\",\\"pri\\":\\"")      property(name="pri")
  constant(value="\\",\\"hostname\\":\\"") property(name="hostname" format="json")
  constant(value="\\",\\"app\\":\\"")      property(name="app-name" format="json")
  constant(value="\\",\\"procid\\":\\"")   property(name="procid" format="json")
  constant(value="\\",\\"msgid\\":\\"")    property(name="msgid" format="json")
  constant(value="\\",\\"sd\\":\\"")       property(name="structured-data" format="json")
  constant(value="\\",\\"msg\\":\\"")      property(name="msg" format="json")
  constant(value="\\",\\"input\\":\\"")    property(name="inputname")
  constant(value="\\"}\\n")
}
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the rsyslog tests must run; apt-get install rsyslog rsyslog-gnutls)")
    pytest.skip(f"{reason}; install the Debian packages rsyslog and rsyslog-gnutls to run this test")


def rsyslogd_path(*, tls: bool = False) -> str:
    """The rsyslogd binary (and, with ``tls``, check the gtls driver), or skip/fail the test."""
    found = shutil.which("rsyslogd") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        _unavailable("rsyslogd is not installed")
    assert found is not None
    if tls and not any(glob.glob(f"{d}/lmnsd_gtls.so") for d in MODULE_DIRS):
        _unavailable("rsyslog's gtls stream driver (lmnsd_gtls.so, package rsyslog-gnutls) is not installed")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (ECDSA P-256): (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=instantly-audit test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for cmd in run:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class Rsyslog:
    """One rsyslogd child process with a plain TCP listener and, optionally, a TLS listener."""

    def __init__(self, workdir: Path, *, tls: bool = False):
        self.binary = rsyslogd_path(tls=tls)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        self.tls = tls
        self.tcp_port = free_port()
        self.tls_port = free_port() if tls else 0
        self.output = self.dir / "received.jsonl"
        self.internal = self.dir / "internal.log"
        self.ca: Path | None = None
        self.cert: Path | None = None
        self.key: Path | None = None
        if tls:
            self.ca, self.cert, self.key = make_certs(self.dir / "certs")
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(self._config())
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        tls_global = (
            f'  defaultNetstreamDriverCAFile="{self.ca}"\n'
            f'  defaultNetstreamDriverCertFile="{self.cert}"\n'
            f'  defaultNetstreamDriverKeyFile="{self.key}"\n'
            if self.tls
            else ""
        )
        tls_input = (
            f'input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" name="tls" ruleset="capture"\n'
            '      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")\n'
            if self.tls
            else ""
        )
        return (
            "global(\n"
            f'  workDirectory="{self.dir / "spool"}"\n'
            '  maxMessageSize="256k"\n'
            '  parser.escapeControlCharactersOnReceive="off"\n'
            f"{tls_global})\n"
            'module(load="imtcp")\n'
            f"{_TEMPLATE}"
            'ruleset(name="capture") {\n'
            f'  action(type="omfile" file="{self.output}" template="capture")\n'
            "}\n"
            f'*.* action(type="omfile" file="{self.internal}")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}" name="tcp" ruleset="capture")\n'
            f"{tls_input}"
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> None:
        """Start rsyslogd and wait until every listener accepts connections."""
        log = (self.dir / "rsyslogd.stderr").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        ports = [self.tcp_port] + ([self.tls_port] if self.tls else [])
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: {self.diagnostics()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not listen on {pending} within {timeout}s: {self.diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                    pending.pop(0)
            except OSError:
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child (SIGKILL after ``timeout``) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> None:
        """Stop and start again on the same ports (a collector that is restarted)."""
        self.stop()
        self.start()

    def diagnostics(self) -> str:
        """rsyslogd's stderr and internal log (for failure messages)."""
        parts = []
        for p in (self.dir / "rsyslogd.stderr", self.internal):
            if p.exists():
                parts.append(f"{p.name}: {p.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts) or "(no output)"

    # ------------------------------------------------------------------ reading
    def messages(self) -> list[dict[str, Any]]:
        """Every message written so far (complete lines only: rsyslog may be mid-write)."""
        if not self.output.exists():
            return []
        *complete, _partial = self.output.read_bytes().split(b"\n")
        return [json.loads(line) for line in complete if line]

    async def wait_for(self, count: int, within_secs: float = 15.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages arrived (then a little longer, to catch extras)."""
        deadline = time.monotonic() + within_secs
        while len(msgs := self.messages()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"rsyslog got {len(msgs)} of {count} messages; {self.diagnostics()}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        return self.messages()

    def __enter__(self) -> Rsyslog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
