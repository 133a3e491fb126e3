"""Loading the config file: YAML, ``${ENV}`` interpolation, secret files and Vault references,
then validation into the composed :class:`~pipeline.config.model.PipelineConfig`.

* ``${VAR}`` (or ``${VAR:-default}``) in any string is replaced from the environment;
  ``$${`` writes a literal ``${``. A missing variable is an error naming the path.
* Secrets (API keys, tokens, passwords) are never taken literally from the file: a secret
  field accepts only a whole ``${VAR}`` reference (no ``:-default``: a default is a literal) or
  a sibling ``<field>_file`` path whose content is read at start (Docker/Kubernetes secrets),
  or a sibling ``<field>_vault`` reference read from HashiCorp Vault (``secret_managers.vault``).
  Every key ending in ``_file`` is such a secret file reference, except the TLS path fields
  :data:`PATH_FIELDS` (``ca_file``, ``client_cert_file``, ``client_key_file``), which stay paths
  (checked, with every other TLS file of the config, by :mod:`pipeline.config.tls`).
* Every problem is reported at once: a missing variable or an unreadable secret file is recorded,
  its value becomes a placeholder (below), and the lines come out with the model's errors.
* YAML aliases are expanded with a bound (:data:`MAX_NODES`): a few hundred bytes of nested
  aliases ("billion laughs") fail fast with a ConfigError instead of taking minutes and gigabytes.

Commands resolve only the secrets they use: ``resolve`` (a predicate on the key path) says
which references to read; every other ``${VAR}``, ``*_file`` and ``*_vault`` value becomes a
:class:`~pipeline.config.base.NotRead` placeholder that passes the secret checks and the value
checks only the real value can decide (a Slack URL's form, a ``whsec_`` secret, an http(s) URL);
validation errors caused by a placeholder are not reported, and a block whose only errors are
such keeps its place (:func:`~pipeline.config.base.validate_block`): a sink is never dropped
because its secret was not read (``config validate --no-environment`` reads none at all).

This module is the only one that reads the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config.base import (
    DefaultedEnvValue,
    EnvValue,
    FileValue,
    InterpolatedValue,
    NotRead,
    Unresolved,
    _path,
)
from pipeline.config.model import PipelineConfig, compose
from pipeline.config.tls import tls_problems
from pipeline.config.vault import VaultSettings, resolve_managed_secrets
from pipeline.config.yaml_keys import repeated_key
from pipeline.config.yaml_load import SafeLoader, YAMLNestingError
from pipeline.errors import ConfigError
from pipeline.redaction.config import secret_values
from pipeline.redaction.registry import register_secret
from pipeline.redaction.urls import set_url_path_hosts

PATH_FIELDS = frozenset({"ca_file", "client_cert_file", "client_key_file"})
"""Keys ending in ``_file`` that are paths (TLS material read by the TLS library), not secret files."""
MAX_NODES = 100_000
"""The most YAML nodes a config may expand to (aliases counted each time they are used)."""

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WHOLE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$")


Resolve = Callable[[tuple[Any, ...]], bool]
"""Which key paths' references to read (``None``: all of them)."""


def placeholder(name: str) -> Unresolved:
    """A stand-in for a reference that could not be read (its problem is reported): printable,
    32+ characters, unique per name."""
    return Unresolved(f"unresolved-{hashlib.sha256(name.encode()).hexdigest()[:24]}")


def not_read(name: str) -> NotRead:
    """A stand-in for a reference this command does not read (:func:`placeholder`'s form)."""
    return NotRead(placeholder(name))


def _missing(where: tuple[Any, ...], name: str, problems: list[str] | None) -> Unresolved:
    """A missing variable: raised (``problems`` is None) or recorded, leaving a placeholder so that
    the rest of the file is still checked and nothing reports the placeholder again."""
    message = f"{_path(where)}: environment variable {name} is not set"
    if problems is None:
        raise ConfigError(message)
    problems.append(message)
    return placeholder(f"{_path(where)}:{name}")


def _interpolate(
    value: str,
    where: tuple[Any, ...],
    env: Mapping[str, str],
    resolve: Resolve | None = None,
    problems: list[str] | None = None,
) -> str:
    if resolve is not None and not resolve(where) and "${" in value:
        whole = _WHOLE.match(value)
        return not_read(whole.group(1) if whole else value)
    whole = _WHOLE.match(value)
    if whole:
        name, default = whole.group(1), whole.group(2)
        if default is not None:
            return DefaultedEnvValue(env.get(name, default))
        if name in env:
            return EnvValue(env[name])
        return _missing(where, name, problems)

    read: list[str] = []
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name in env:
            read.append(name)
            return env[name]
        if default is not None:
            return default
        if name not in missing:
            missing.append(name)
        return ""

    out = _REF.sub(sub, value)
    if missing:
        stand_in = _missing(where, missing[0], problems)
        for name in missing[1:]:
            _missing(where, name, problems)
        return stand_in
    # Part of the string came from the environment: a config error must not quote it.
    return InterpolatedValue(out) if read else out


def _resolve(
    node: Any,
    where: tuple[Any, ...],
    env: Mapping[str, str],
    base: Path,
    resolve: Resolve | None = None,
    problems: list[str] | None = None,
) -> Any:
    """``node`` with references read. With ``problems`` (a list), a missing variable or an unreadable
    secret file is recorded there and its value becomes a placeholder, so every problem of the file
    is found in one pass; without it, the first one raises."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not isinstance(k, str):
                _problem(f"{_path((*where, k))}: keys must be strings", problems)
                continue
            here = (*where, k)
            if k.endswith(("_file", "_vault")) and len(k) > 6 and k not in PATH_FIELDS:
                field = k[: k.rindex("_")]
                if k.endswith("_vault") and (field in node or resolve is None or resolve(here)):
                    out[k] = _resolve(v, here, env, base, resolve, problems)  # pipeline.config.vault reads it
                    continue
                if field in node:
                    _problem(f"{_path(here)}: give either {field} or {k}, not both", problems)
                    continue
                if resolve is not None and not resolve(here):
                    out[field] = not_read(_path(here))
                    continue
                before = len(problems) if problems is not None else 0
                path = _resolve(v, here, env, base, resolve, problems)
                if problems is not None and len(problems) > before:
                    out[field] = placeholder(_path(here))  # the path itself was the problem (a missing variable)
                    continue
                try:
                    out[field] = _read_secret_file(path, here, base)
                except ConfigError as err:
                    _problem(str(err), problems)
                    out[field] = placeholder(_path(here))
            else:
                out[k] = _resolve(v, here, env, base, resolve, problems)
        return out
    if isinstance(node, list):
        return [_resolve(v, (*where, i), env, base, resolve, problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _interpolate(node, where, env, resolve, problems)
    return node


def _problem(message: str, problems: list[str] | None) -> None:
    if problems is None:
        raise ConfigError(message)
    problems.append(message)


def _read_secret_file(value: Any, where: tuple[Any, ...], base: Path) -> FileValue:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{_path(where)}: expected a file path")
    p = Path(value)
    if not p.is_absolute():
        p = base / p
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{_path(where)}: secret file {p} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{_path(where)}: secret file {p} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{_path(where)}: secret file {p} is a directory") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{_path(where)}: secret file {p} cannot be read ({type(err).__name__})") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(f"{_path(where)}: secret file {p} is empty")
    return FileValue(text)


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` expands to, each alias counted at every use (memoised: linear time).

    Raises:
        ConfigError: the expansion exceeds :data:`MAX_NODES`, or an alias refers to itself.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes and not done:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if not done:
            if key in active:
                raise ConfigError("config YAML has an alias that refers to itself")
            active.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        active.discard(key)
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        if total > MAX_NODES:
            raise ConfigError(
                f"config YAML expands to more than {MAX_NODES:,} nodes (nested aliases?); refusing to load it"
            )
        sizes[key] = total
    return sizes.get(id(root), 1)


def _safe_load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with the alias expansion checked (:func:`_expanded_size`) before construction.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
        ConfigError: the document expands past :data:`MAX_NODES` nodes.
    """
    loader = SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        if (repeated := repeated_key(node)) is not None:
            raise ConfigError(f"config is not valid YAML at {repeated}")
        return loader.construct_document(node)
    except RecursionError:  # PyYAML composes and constructs recursively
        raise YAMLNestingError() from None
    finally:
        loader.dispose()


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-)?")


def _quote_hint(text: str, mark: Any) -> str:
    """For ``{…, token: ${VAR}}``: inside a flow block ``{`` opens a mapping, so the reference must
    be quoted. Names the reference (a variable name, never its value)."""
    if mark is None or mark.line >= len(lines := text.splitlines()):
        return ""
    ref = _REFERENCE.search(lines[mark.line], max(mark.column - 1, 0))
    if ref is None or ref.start() > mark.column:
        return ""
    shown = "${" + ref.group(1) + (":-…}" if ref.group(2) else "}")  # a default is never echoed
    return f' (inside {{…}} or […] quote the reference: "{shown}")'


def parse_config(
    text: str,
    *,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    resolve: Resolve | None = None,
) -> PipelineConfig:
    """Parse YAML text into a :class:`PipelineConfig`.

    ``resolve`` limits which references are read (see the module docstring); ``None`` reads all.

    Raises:
        ConfigError: the text is not valid YAML, or a key/value is invalid (the message
            names the key path; one line per problem).
    """
    try:
        data = _safe_load_bounded(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        if "'\\t'" in problem:  # PyYAML: "found character '\\t' that cannot start any token"
            problem += " (YAML: indent with spaces, not tabs)"
        raise ConfigError(f"config is not valid YAML{where}: {problem}{_quote_hint(text, mark)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    # Every problem of the file in one pass: a missing variable or secret file leaves a placeholder
    # (ignored by the validation) and its line is reported with the model's.
    problems: list[str] = []
    resolved = _resolve(data, (), os.environ if env is None else env, base_dir or Path.cwd(), resolve, problems)
    base = base_dir or Path.cwd()
    check_files = resolve if resolve is not None else _everything
    _anchor_vault_paths(resolved, base)
    problems += _vault_tls_problems(resolved, base, check_files)
    resolved = resolve_managed_secrets(resolved, problems=problems, stand_in=placeholder, offline=bool(problems))
    try:
        cfg = compose(resolved, base_dir=base_dir, check_files=check_files)
    except ConfigError as err:
        raise ConfigError("\n".join([*problems, *str(err).splitlines()])) from None
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def _everything(where: tuple[Any, ...]) -> bool:
    return True


def _vault_block(tree: Mapping[str, Any]) -> dict[str, Any] | None:
    managers = tree.get("secret_managers")
    block = managers.get("vault") if isinstance(managers, dict) else None
    return block if isinstance(block, dict) else None


def _anchor_vault_paths(tree: Mapping[str, Any], base: Path) -> None:
    """Make ``secret_managers.vault``'s TLS paths relative to the config file, like every other path
    (the section stays a mapping: Vault settings are validated where they are used)."""
    block = _vault_block(tree)
    for name in PATH_FIELDS if block is not None else ():
        value = block.get(name)  # type: ignore[union-attr]  # block is not None here
        if isinstance(value, str) and value and not Path(value).is_absolute():
            block[name] = type(value)(str(base / value))  # type: ignore[index]


def _vault_tls_problems(tree: Mapping[str, Any], base: Path, check: Resolve) -> list[str]:
    """The problems with ``secret_managers.vault``'s TLS files (none when its settings are invalid:
    those are reported by :func:`~pipeline.config.vault.resolve_managed_secrets` when it is used)."""
    block = _vault_block(tree)
    if block is None:
        return []
    try:
        settings = VaultSettings.model_validate(block)
    except ValidationError:
        return []
    return tls_problems(settings, ("secret_managers", "vault"), base, check)


def teach_redaction(cfg: PipelineConfig) -> None:
    """Register every secret of ``cfg`` (sinks' too) with the redaction and apply ``redaction.url_path_hosts``.

    Sinks are typed by then (validated at load), so their secrets are walked with the rest.
    """
    for value in secret_values(cfg):
        register_secret(value)
    set_url_path_hosts(cfg.redaction.url_path_hosts)


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, resolve: Resolve | None = None
) -> PipelineConfig:
    """Read and validate a config file (secret ``*_file`` paths are relative to the file), and teach the
    redaction its secrets and URL allowlist (:func:`teach_redaction`).

    Raises:
        ConfigError: the file cannot be read or is invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {p} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    cfg = parse_config(text, env=env, base_dir=p.resolve().parent, resolve=resolve)
    teach_redaction(cfg)
    return cfg


def resolve_nothing(where: tuple[Any, ...]) -> bool:
    """A ``resolve`` predicate that reads no reference (structure-only validation)."""
    return False


def resolve_under(*prefixes: tuple[str, ...]) -> Resolve:
    """A ``resolve`` predicate that reads only the references below one of ``prefixes``."""
    return lambda where: any(tuple(where[: len(p)]) == p for p in prefixes)
