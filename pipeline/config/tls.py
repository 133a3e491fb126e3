"""TLS files named in the config (CA bundles, certificates, private keys): checked when the file is
loaded, and loaded at run time with errors that name the key and the file.

A model with such fields lists them in ``tls_files`` (a :class:`TlsFiles`: the CA, certificate and
key field names). :func:`tls_problems` walks a validated model and checks each path the way secret
``*_file`` paths are checked (relative to the config file's directory; exists, a regular file,
readable), then loads the PEM into a throwaway context, so a malformed file or a key that does not
match its certificate is a ``config validate`` error. :func:`tls_context` and :func:`loading` are
for the code that builds the real context at run time.

No message quotes a file's content: only the key path, the absolute path and the TLS library's
reason (``KEY_VALUES_MISMATCH``, ``PEM lib``).
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from pipeline.errors import ConfigError

__all__ = ["TlsFiles", "file_problem", "loading", "no_password", "tls_context", "tls_problems"]

_PLACEHOLDER = re.compile(r"unresolved-[0-9a-f]{24}")
"""The loader's stand-in for an unread ``${VAR}`` (:func:`pipeline.config.loader.placeholder`)."""


_SSL_SOURCE = re.compile(r"\(_ssl\.c:\d+\)")


class TlsFiles(NamedTuple):
    """The field names of a model's TLS files (``None``: the model has no such field)."""

    ca: str | None
    cert: str | None
    key: str | None


def no_password() -> bytes:
    """The password callback for :meth:`ssl.SSLContext.load_cert_chain`: an encrypted key fails to
    load instead of OpenSSL prompting on the terminal (a service has none; the config has no key password)."""
    return b""


def file_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a file to read (``None``: nothing), in the secret files' words."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return "is not readable (permission denied)"
    except OSError as err:
        return f"cannot be read ({type(err).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    try:
        with path.open("rb"):
            pass
    except PermissionError:
        return "is not readable (permission denied)"
    except OSError as err:
        return f"cannot be read ({type(err).__name__})"
    return None


def _absolute(path: Path, base: Path | None) -> Path:
    if not path.is_absolute() and base is not None:
        path = base / path
    return Path(os.path.abspath(path))


def _reason(err: BaseException) -> str:
    """The TLS library's reason, never a file's content."""
    if isinstance(err, ssl.SSLError):
        reason = getattr(err, "reason", None) or (err.args[1] if len(err.args) > 1 else None)
        if not reason:
            return type(err).__name__
        reason = _SSL_SOURCE.sub("", str(reason)).strip()
        if "PEM" in reason:
            reason += ": expected PEM certificates (and an unencrypted private key matching the certificate)"
        return reason
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return type(err).__name__


def _files(model: BaseModel, spec: TlsFiles, base: Path | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name in spec:
        value = getattr(model, name) if name is not None else None
        if isinstance(value, Path):
            out[name] = _absolute(value, base)  # type: ignore[index]  # name is not None here
    return out


def _check_files(where: str, files: Mapping[str, Path]) -> list[str]:
    problems = []
    for name, path in files.items():
        found = file_problem(path)
        if found is not None:
            problems.append(f"{where}.{name}: file {path} {found}")
    return problems


@contextmanager
def loading(where: str, files: Mapping[str, Path | None]) -> Iterator[None]:
    """Check ``files`` (field name → path) and turn a failure of the ``with`` body (building the TLS
    context from them) into a :class:`ConfigError` naming ``where``, the fields and the paths.

    Raises:
        ConfigError: a file is missing, unreadable or a directory, or the TLS library refused it.
    """
    given = {k: Path(os.path.abspath(v)) for k, v in files.items() if v is not None}
    problems = _check_files(where, given)
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        yield
    except (OSError, ssl.SSLError, ValueError) as err:
        names = "/".join(given) or "tls"
        paths = ", ".join(str(p) for p in given.values())
        raise ConfigError(f"{where}.{names}: cannot load {paths} ({_reason(err)})") from None


def tls_context(
    where: str,
    *,
    purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
    ca: tuple[str, Path | None] | None = None,
    cert: tuple[str, Path | None] | None = None,
    key: tuple[str, Path | None] | None = None,
) -> ssl.SSLContext:
    """``ssl.create_default_context(purpose, cafile=CA)`` with the certificate chain loaded; each of
    ``ca``, ``cert``, ``key`` is (config field name, path). The CA and the certificate pair are
    loaded separately so that an error names the right field.

    Raises:
        ConfigError: ``<where>.<field>: file <path> does not exist`` (is not readable, is a directory),
            or ``<where>.<fields>: cannot load <paths> (<reason>)``.
    """
    ca_name, ca_path = ca if ca is not None else ("ca_file", None)
    with loading(where, {ca_name: ca_path}):
        ctx = ssl.create_default_context(purpose, cafile=str(ca_path) if ca_path is not None else None)
    if cert is not None and cert[1] is not None:
        pair = {cert[0]: cert[1]}
        if key is not None and key[1] is not None:
            pair[key[0]] = key[1]
        with loading(where, pair):
            ctx.load_cert_chain(str(cert[1]), str(key[1]) if key and key[1] else None, password=no_password)
    return ctx


def _load_pem(where: str, spec: TlsFiles, files: Mapping[str, Path]) -> list[str]:
    """Load the files into a throwaway context: a malformed PEM or a mismatched pair is reported."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    problems: list[str] = []
    if spec.ca is not None and spec.ca in files:
        try:
            with loading(where, {spec.ca: files[spec.ca]}):
                ctx.load_verify_locations(cafile=str(files[spec.ca]))
        except ConfigError as err:
            problems.append(str(err))
    cert_name = spec.cert
    cert = files.get(cert_name) if cert_name is not None else None
    if cert_name is not None and cert is not None:
        key = files.get(spec.key) if spec.key is not None else None
        pair: dict[str, Path | None] = {cert_name: cert}
        if spec.key is not None and key is not None:
            pair[spec.key] = key
        try:
            with loading(where, pair):
                ctx.load_cert_chain(str(cert), str(key) if key is not None else None, password=no_password)
        except ConfigError as err:
            problems.append(str(err))
    return problems


def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def tls_problems(
    node: Any, where: tuple[Any, ...], base: Path | None, check: Callable[[tuple[Any, ...]], bool]
) -> list[str]:
    """Every problem with the TLS files of ``node`` (a validated model, or a dict/list of them) below
    the key path ``where``: one line each, ``<key path>: file <absolute path> does not exist`` (or is
    not readable, is a directory, is not a regular file), or ``<key path>: cannot load <paths> (<reason>)``.

    Relative paths are taken against ``base`` (the config file's directory). ``check`` says which key
    paths to check (a command checks only the files of the sections whose secrets it reads), and a
    path that is the loader's placeholder for an unread ``${VAR}`` is not checked.
    """
    problems: list[str] = []
    if isinstance(node, BaseModel):
        spec: TlsFiles | None = getattr(type(node), "tls_files", None)
        if spec is not None:
            files = {
                name: path
                for name, path in _files(node, spec, base).items()
                if check((*where, name)) and not _PLACEHOLDER.search(str(path))
            }
            found = _check_files(_path(where), files)
            problems += found
            if not found:
                problems += _load_pem(_path(where), spec, files)
        for name in type(node).model_fields:
            value = getattr(node, name)
            if isinstance(value, BaseModel | dict | list | tuple):
                problems += tls_problems(value, (*where, name), base, check)
    elif isinstance(node, dict):
        for k, v in node.items():
            problems += tls_problems(v, (*where, k), base, check)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            problems += tls_problems(v, (*where, i), base, check)
    return problems
