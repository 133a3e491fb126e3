"""Secret managers as a third secret source: ``<field>_vault`` references resolved through HashiCorp Vault.

Every secret in the config can come from the environment (``${VAR}``), a file (``<field>_file``,
Docker/Kubernetes secrets) or — with the optional extra ``instantly-audit[vault]`` — from
Vault's KV version 2 engine through its official client, ``hvac``::

    secret_managers:
      vault:
        url: https://vault.internal:8200
        token_file: /run/secrets/vault-token        # or token: ${VAULT_TOKEN}
        namespace: team-a                           # Vault Enterprise namespaces (optional)
        ca_file: /etc/ssl/vault-ca.pem              # optional, a path (client_cert_file, client_key_file too)
        timeout_secs: 10
    workspaces:
      acme:
        api_key_vault: secret/instantly/acme#api_key    # <mount>/<path>#<field>
      # or: api_key_vault: {mount: kv, path: teams/instantly/acme, field: api_key, version: 3}

:func:`resolve_managed_secrets` runs after :func:`pipeline.config._resolve` (so the Vault
token itself comes from the environment or a file) and replaces each ``<field>_vault`` key by
``<field>`` holding a :class:`ManagedValue`, which the config's ``Secret`` type accepts like a
file value. A field given both ways is an error. Nothing here reads the environment:
``hvac.Client`` gets the URL, token, TLS settings and client certificate explicitly, and its
``requests`` session ignores proxy and CA environment variables.

:class:`VaultKV` also writes secrets (key rotation stores new keys with it): a write keeps
the other fields at the path and uses check-and-set, so a concurrent change is refused
instead of being overwritten. Error messages name the reference (mount, path, field) and the
HTTP status, never a value or the token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator

from pipeline.config.base import FileValue, Model, Secret, validation_error_lines
from pipeline.config.tls import TlsFiles
from pipeline.config.transport import checked_url, plaintext_url, refuse_unless_allowed, warn_insecure
from pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:  # pragma: no cover - typing only; hvac is an optional extra
    import hvac

__all__ = [
    "ManagedValue",
    "SecretSourceError",
    "VaultKV",
    "VaultRef",
    "VaultSettings",
    "parse_vault_ref",
    "resolve_managed_secrets",
]

SUFFIX = "_vault"
"""Config keys ending in this suffix are Vault references for the field without it."""
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@=+-]+$")


class ManagedValue(FileValue):
    """A secret fetched from a secret manager (a :class:`FileValue`, so ``Secret`` fields accept it)."""

    __slots__ = ()


class SecretSourceError(PipelineError):
    """A secret manager refused or failed a read or a write (the message names the reference only)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message, retriable=status is None or status == 429 or status >= 500)
        self.status = status


# ------------------------------------------------------------------------------------ references
@dataclass(frozen=True, slots=True)
class VaultRef:
    """One field of one KV v2 secret: ``GET /v1/<mount>/data/<path>`` → ``data.data[<field>]``."""

    mount: str
    path: str
    field: str
    version: int | None = None

    def __str__(self) -> str:
        version = f"@{self.version}" if self.version is not None else ""
        return f"{self.mount}/{self.path}#{self.field}{version}"


def _check_path(value: str, what: str) -> str:
    parts = value.strip("/").split("/")
    if not value.strip("/") or any(not p or p in (".", "..") or not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"{what} {value!r} is not a Vault path (segments of letters, digits and _.@=+-)")
    return "/".join(parts)


def parse_vault_ref(value: Any) -> VaultRef:
    """Parse ``"<mount>/<path>#<field>"`` or ``{mount, path, field, version}`` into a :class:`VaultRef`.

    A ``data/`` segment right after the mount (``secret/data/instantly#api_key``, the HTTP API
    path) is accepted and dropped.

    Raises:
        ValueError: the reference is malformed.
    """
    if isinstance(value, str):
        text = value.strip()
        path_part, sep, field = text.partition("#")
        if not sep or not field:
            raise ValueError("a Vault reference is '<mount>/<path>#<field>', e.g. secret/instantly/acme#api_key")
        mount, _, path = _check_path(path_part, "reference").partition("/")
        if path.startswith("data/"):
            path = path[len("data/") :]
        if not path:
            raise ValueError("a Vault reference needs a path below the mount: '<mount>/<path>#<field>'")
        return VaultRef(mount, path, field)
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in set(value) - {"mount", "path", "field", "version"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (allowed: mount, path, field, version)")
        m, p, f, version = value.get("mount", "secret"), value.get("path"), value.get("field"), value.get("version")
        if not isinstance(m, str) or not isinstance(p, str) or not isinstance(f, str) or not f:
            raise ValueError("a Vault reference mapping needs string 'path' and 'field' (and optionally 'mount')")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise ValueError("'version' must be a positive integer")
        mount = _check_path(m, "mount")
        if "/" in mount:
            raise ValueError(f"mount {mount!r} must be one path segment")
        return VaultRef(mount, _check_path(p, "path"), f, version)
    raise ValueError("a Vault reference is a string '<mount>/<path>#<field>' or a mapping {mount, path, field}")


# ------------------------------------------------------------------------------------- settings
class VaultSettings(Model):
    """``secret_managers.vault``: where Vault is and how to authenticate (token auth)."""

    tls_files: ClassVar[TlsFiles] = TlsFiles("ca_file", "client_cert_file", "client_key_file")

    url: str
    token: Secret
    namespace: str | None = None
    ca_file: Path | None = Field(None, description="CA bundle for Vault's TLS certificate (default: system CAs)")
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    timeout_secs: float = Field(10.0, gt=0, le=300)
    allow_insecure: bool = Field(False, description="accept an http:// Vault (the token would travel in plaintext)")

    @field_validator("url", mode="wrap")
    @classmethod
    def _url(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return checked_url(v, handler, "https://vault.internal:8200", credentials="the token goes in token")

    def insecure_transport(self) -> list[str]:
        """What is insecure about this Vault address (empty: nothing)."""
        return ["the Vault token would travel over plain http://"] if plaintext_url(self.url) else []

    @model_validator(mode="after")
    def _transport(self) -> VaultSettings:
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        refuse_unless_allowed(self.insecure_transport(), self.allow_insecure)
        return self


def vault_settings(section: Mapping[str, Any] | None, where: str = "secret_managers") -> VaultSettings:
    """Validate ``<where>.vault``.

    Raises:
        ConfigError: missing or invalid (one line per problem, naming the key path).
    """
    block = (section or {}).get("vault")
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}.vault: required to resolve *_vault secrets (url and token)")
    try:
        settings = VaultSettings.model_validate(dict(block))
    except ValidationError as err:
        lines = validation_error_lines(err, VaultSettings)
        raise ConfigError("\n".join(f"{where}.vault.{line}" for line in lines)) from None
    warn_insecure(f"{where}.vault", settings.insecure_transport())
    return settings


# --------------------------------------------------------------------------------------- client
ClientFactory = Callable[[VaultSettings], "hvac.Client"]


def _hvac_client(settings: VaultSettings) -> hvac.Client:
    try:
        import hvac
        import requests
    except ImportError:
        raise ConfigError(
            "Vault secrets need the optional extra: pip install 'instantly-audit[vault]' (installs hvac)"
        ) from None
    session = requests.Session()
    session.trust_env = False  # no proxy / CA / netrc settings from the environment
    cert: tuple[str, str] | bool = False  # False: never hvac's VAULT_CLIENT_CERT environment fallback
    if settings.client_cert_file is not None:
        key = settings.client_key_file or settings.client_cert_file
        cert = (str(settings.client_cert_file), str(key))
    return hvac.Client(
        url=settings.url,
        token=settings.token.get_secret_value(),
        namespace=settings.namespace,
        verify=str(settings.ca_file) if settings.ca_file is not None else True,
        cert=cert,  # type: ignore[arg-type]  # False is passed through to requests (no client certificate)
        timeout=int(max(1, round(settings.timeout_secs))),
        session=session,
        allow_redirects=False,
    )


class VaultKV:
    """Read and write single fields of KV v2 secrets (blocking calls; wrap in ``asyncio.to_thread``)."""

    def __init__(self, settings: VaultSettings, *, client_factory: ClientFactory | None = None):
        self.settings = settings
        self._client = (client_factory or _hvac_client)(settings)

    def __repr__(self) -> str:
        return f"VaultKV(url={self.settings.url!r})"

    def read_data(self, ref: VaultRef) -> tuple[dict[str, Any], int | None]:
        """All fields of the secret at ``ref`` and its version.

        Raises:
            SecretSourceError: Vault refused, the secret does not exist, or Vault is unreachable.
        """
        try:
            resp = self._client.secrets.kv.v2.read_secret_version(
                path=ref.path, version=ref.version, mount_point=ref.mount, raise_on_deleted_version=True
            )
        except Exception as err:  # noqa: BLE001 - hvac raises VaultError, requests its own; both are wrapped
            failure = _failure("read", ref, err)
        else:
            body = resp.get("data") if isinstance(resp, Mapping) else None
            data, meta = (body.get("data"), body.get("metadata")) if isinstance(body, Mapping) else (None, None)
            if not isinstance(data, Mapping):
                raise SecretSourceError(f"Vault read {ref}: the response has no KV v2 data (is the mount KV v2?)")
            version = meta.get("version") if isinstance(meta, Mapping) else None
            return dict(data), version if isinstance(version, int) else None
        raise failure  # outside the except block: the hvac/requests error is not chained

    def read(self, ref: VaultRef) -> str:
        """The value of ``ref.field``.

        Raises:
            SecretSourceError: as :meth:`read_data`, or the field is missing, empty or not a string.
        """
        data, _ = self.read_data(ref)
        value = data.get(ref.field)
        if not isinstance(value, str) or not value:
            present = ", ".join(sorted(data)) or "none"
            raise SecretSourceError(f"Vault secret {ref}: field {ref.field!r} is missing or empty (fields: {present})")
        return value

    def write(self, ref: VaultRef, value: str) -> int | None:
        """Set ``ref.field`` to ``value``, keeping the secret's other fields; return the new version.

        Uses check-and-set on the version read just before, so a concurrent writer makes this
        fail rather than lose its change.

        Raises:
            SecretSourceError: Vault refused (including a check-and-set conflict) or is unreachable.
        """
        try:
            current, version = self.read_data(VaultRef(ref.mount, ref.path, ref.field))
        except SecretSourceError as err:
            if err.status != 404:
                raise
            current, version = {}, 0
        current[ref.field] = value
        try:
            resp = self._client.secrets.kv.v2.create_or_update_secret(
                path=ref.path, secret=current, cas=version or 0, mount_point=ref.mount
            )
        except Exception as err:  # noqa: BLE001 - wrapped below
            failure = _failure("write", ref, err)
        else:
            body = resp.get("data") if isinstance(resp, Mapping) else None
            new = body.get("version") if isinstance(body, Mapping) else None
            return new if isinstance(new, int) else None
        raise failure


def _failure(op: str, ref: VaultRef, err: Exception) -> SecretSourceError:
    """A message naming the operation, the reference and the status — never the request or its headers."""
    status = _status_of(err)
    what = f"HTTP {status}" if status else type(err).__name__
    hint = {
        403: " (permission denied: check the token's policy)",
        404: " (no such secret)",
        400: " (refused; a check-and-set conflict means the secret changed meanwhile)",
    }.get(status or 0, "")
    return SecretSourceError(f"Vault {op} {ref} failed: {what}{hint}", status=status)


def _status_of(err: Exception) -> int | None:
    names = {"InvalidRequest": 400, "Unauthorized": 401, "Forbidden": 403, "InvalidPath": 404,
             "PreconditionFailed": 412, "RateLimitExceeded": 429, "InternalServerError": 500,
             "VaultNotInitialized": 501, "BadGateway": 502, "VaultDown": 503}  # fmt: skip
    return names.get(type(err).__name__)


# ------------------------------------------------------------------------------------ resolving
def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


def _has_refs(node: Any) -> bool:
    if isinstance(node, Mapping):
        return any((isinstance(k, str) and k.endswith(SUFFIX) and len(k) > len(SUFFIX)) or _has_refs(v)
                   for k, v in node.items())  # fmt: skip
    if isinstance(node, list):
        return any(_has_refs(v) for v in node)
    return False


def resolve_managed_secrets(
    tree: Mapping[str, Any],
    *,
    client_factory: ClientFactory | None = None,
    problems: list[str] | None = None,
    stand_in: Callable[[str], str] | None = None,
    offline: bool = False,
) -> dict[str, Any]:
    """Replace every ``<field>_vault`` reference in an already env/file-resolved config tree.

    Settings come from ``tree["secret_managers"]["vault"]``; Vault is contacted only when a
    reference exists, once per secret (several fields of one secret cost one read).

    With ``problems`` (a list) the problems are appended there instead of raised, and a reference
    that could not be read becomes ``stand_in(key path)`` (a placeholder the validation ignores), so
    the caller reports them with the rest of the file's. ``offline``: contact no Vault (the file
    already has a problem, e.g. the token's variable is unset); references are only parsed.

    Raises:
        ConfigError: a reference is malformed or duplicated, the settings are invalid, hvac is
            not installed, or Vault refused a read (one line per problem, naming the key path);
            only when ``problems`` is None.
    """
    if not _has_refs(tree):
        return dict(tree)
    errors: list[str] = []
    kv: VaultKV | None = None
    if not offline:
        try:
            kv = VaultKV(vault_settings(tree.get("secret_managers")), client_factory=client_factory)
        except ConfigError as err:
            if problems is None or stand_in is None:
                raise
            errors += str(err).splitlines()
    cache: dict[tuple[str, str, int | None], dict[str, Any]] = {}

    def fetch(ref: VaultRef) -> str:
        key = (ref.mount, ref.path, ref.version)
        if kv is None:
            raise _Skipped
        if key not in cache:
            cache[key] = kv.read_data(ref)[0]
        value = cache[key].get(ref.field)
        if not isinstance(value, str) or not value:
            raise SecretSourceError(f"Vault secret {ref}: field {ref.field!r} is missing or empty")
        return value

    def walk(node: Any, where: tuple[Any, ...]) -> Any:
        if isinstance(node, Mapping):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if isinstance(k, str) and k.endswith(SUFFIX) and len(k) > len(SUFFIX):
                    field = k[: -len(SUFFIX)]
                    here = _path((*where, k))
                    if field in node:
                        errors.append(f"{here}: give either {field} (or {field}_file) or {k}, not both")
                        continue
                    try:
                        out[field] = ManagedValue(fetch(parse_vault_ref(v)))
                        continue
                    except ValueError as err:
                        errors.append(f"{here}: {err}")
                    except SecretSourceError as err:
                        errors.append(f"{here}: {err.message}")
                    except _Skipped:
                        pass
                    if stand_in is not None:
                        out[field] = stand_in(here)
                else:
                    out[k] = walk(v, (*where, k))
            return out
        if isinstance(node, list):
            return [walk(v, (*where, i)) for i, v in enumerate(node)]
        return node

    resolved = walk(tree, ())
    if errors:
        if problems is None:
            raise ConfigError("\n".join(errors))
        problems += errors
    assert isinstance(resolved, dict)
    return resolved


class _Skipped(Exception):
    """A reference not read: Vault is not contacted (offline, or its settings are invalid)."""
