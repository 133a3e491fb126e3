"""TLS material of the broker, made with the ``openssl`` CLI: a CA and a broker certificate.

The broker certificate has SAN ``IP:127.0.0.1``, ``DNS:localhost``; the key store is PEM (an
unencrypted PKCS#8 key followed by the chain), the trust store the CA's PEM.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from .defaults import HOST
from .errors import BrokerStartError
from .process import run_tool


def make_tls(tls: Path) -> Path:
    """Create CA + broker certificate with the openssl CLI; return the CA file.

    Raises:
        BrokerStartError: ``openssl`` is missing or one of its commands fails.
    """
    openssl = shutil.which("openssl")
    if not openssl:
        raise BrokerStartError("openssl CLI not found (apt-get install openssl)")
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
    )
    (tls / "broker.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{HOST},DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _genpkey(openssl, tls, "ca.key", "CA")
    run_tool(
        [openssl, "req", "-new", "-key", "ca.key", "-subj", "/CN=instantly-audit test CA", "-out", "ca.csr"],
        tls,
        "openssl req (CA)",
    )
    _x509(openssl, tls, ["-in", "ca.csr", "-signkey", "ca.key"], "ca.ext", "ca.pem", "CA")
    _genpkey(openssl, tls, "broker.key", "broker")
    run_tool(
        [openssl, "req", "-new", "-key", "broker.key", "-subj", "/CN=localhost", "-out", "broker.csr"],
        tls,
        "openssl req (broker)",
    )
    _x509(
        openssl, tls, ["-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key"], "broker.ext", "broker.crt", "broker"
    )
    key = (tls / "broker.key").read_text()
    if "BEGIN PRIVATE KEY" not in key:
        raise BrokerStartError("openssl did not write a PKCS#8 key (BEGIN PRIVATE KEY)")
    # PEM key store: PKCS#8 key followed by the certificate chain
    (tls / "broker.pem").write_text(key + (tls / "broker.crt").read_text() + (tls / "ca.pem").read_text())
    for name in ("ca.key", "broker.key", "broker.pem"):
        (tls / name).chmod(0o600)
    return tls / "ca.pem"


def _genpkey(openssl: str, tls: Path, out: str, who: str) -> None:
    run_tool(
        [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", out],
        tls,
        f"openssl genpkey ({who})",
    )


def _x509(openssl: str, tls: Path, signing: list[str], extfile: str, out: str, who: str) -> None:
    """``openssl x509 -req``: sign a CSR for 30 days with a random serial and ``extfile``."""
    run_tool(
        [
            openssl,
            "x509",
            "-req",
            *signing,
            "-days",
            "30",
            "-set_serial",
            str(secrets.randbits(63)),
            "-extfile",
            extfile,
            "-out",
            out,
        ],
        tls,
        f"openssl x509 ({who})",
    )
