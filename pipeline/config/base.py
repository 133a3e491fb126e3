"""The config toolkit every component's model builds on: the frozen base model, secret fields,
and error messages that name the key path.

* :class:`Model` — frozen, unknown keys forbidden; every config model derives from it.
* :data:`Secret` — a field that accepts only a whole ``${ENV}`` reference, a ``<field>_file``
  path or a ``<field>_vault`` reference (the loader marks such values), never a literal.
* :func:`validation_error_lines` — one line per problem, each naming the key path, with
  "did you mean" for unknown keys; values are echoed only when they cannot be secrets.

A leaf module: it imports nothing of the pipeline but :mod:`pipeline.errors`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, MutableMapping, Sequence
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, RootModel, SecretStr, ValidationError

from pipeline.errors import ConfigError
from schemas.secret_names import is_secret_name


class EnvValue(str):
    """A string that came whole from an environment variable (allowed for secrets)."""

    __slots__ = ()


class InterpolatedValue(str):
    """A string with ``${VAR}`` references inside it replaced (not allowed for secrets; never echoed)."""

    __slots__ = ()


class Unresolved(EnvValue):
    """A reference the loader was told not to read (``config validate --no-environment``, or a
    secret the running command does not use): it passes secret checks, and a validation error
    about it is not reported."""

    __slots__ = ()


class NotRead(Unresolved):
    """An :class:`Unresolved` reference left unread on purpose (not one that failed to read, whose
    problem is reported by the loader): when only such values are wrong, their lines say so."""

    __slots__ = ()


class UnresolvedSecret(SecretStr):
    """A :data:`Secret` field holding an :class:`Unresolved` placeholder: a check of the value
    that only the real secret can decide (a URL's form, a key's encoding) passes it
    (:func:`is_unresolved`), so the block is still validated structurally and kept."""


def is_unresolved(value: Any) -> bool:
    """Whether ``value`` stands for a reference that was not read (a placeholder, or a secret
    holding one): a value check skips it; the real value is checked by the command that reads it."""
    return isinstance(value, Unresolved | UnresolvedSecret)


def unresolved_paths(node: Any, path: str) -> list[str]:
    """The key paths below ``path`` holding a reference that was not read (:func:`is_unresolved`)."""
    if is_unresolved(node):
        return [path]
    out: list[str] = []
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            out += unresolved_paths(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, Mapping):
        for k, v in node.items():
            out += unresolved_paths(v, f"{path}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            out += unresolved_paths(v, f"{path}.{i}")
    return out


class DefaultedEnvValue(EnvValue):
    """A whole ``${VAR:-default}`` reference: never accepted for a secret (the default is a literal)."""

    __slots__ = ()


class FileValue(str):
    """A string read from a ``*_file`` path (allowed for secrets)."""

    __slots__ = ()


def _secret(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return v
    if isinstance(v, Unresolved):
        return UnresolvedSecret(str(v))
    if isinstance(v, DefaultedEnvValue):
        raise ValueError(
            "a secret cannot have a default value (${VAR:-...}): the default is a literal in the file; "
            "use ${VAR} or a <field>_file path"
        )
    if isinstance(v, EnvValue | FileValue):
        # An env var or file ending in a newline (``echo`` into a k8s secret) is the common case:
        # the surrounding whitespace is dropped. A control character left inside is refused (it
        # would break the HTTP header, and be logged escaped, unlike the registered value).
        value = str(v).strip()
        if not value:
            raise ValueError("the secret is empty")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("the secret holds a control character (a newline or tab inside the value)")
        return SecretStr(value)
    if isinstance(v, str):
        raise ValueError(
            "a literal secret in the config file is refused; use a ${ENV_VAR} reference or a <field>_file path"
        )
    raise ValueError("expected a secret (a ${ENV_VAR} reference or a <field>_file path)")


Secret = Annotated[SecretStr, BeforeValidator(_secret)]
"""A secret field: only from ``${ENV}`` or ``<field>_file``."""


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _path(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "<root>"


_SECRETISH = re.compile(r"(?i)(key|secret|password|token|authorization|url|webhook|routing|dsn|header)")


def _describe(err: Mapping[str, Any], model: type[BaseModel], extra_keys: tuple[str, ...] = ()) -> str:
    full = tuple(err.get("loc", ()))
    loc = full
    # Drop pydantic's discriminator tags (e.g. 'sqlite') from the path shown.
    if len(loc) >= 2 and loc[0] == "bus" and loc[1] in ("sqlite", "kafka"):
        loc = (loc[0], *loc[2:])
    where = _shown_path(full)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        known = _known_keys(model, full[:-1])
        if len(full) == 1:
            known = sorted({*known, *extra_keys} - {"sections"})
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f" (did you mean '{hint[0]}'?)" if hint else (f" (allowed: {', '.join(known)})" if known else "")
        return f"{where}: unknown key{tip}"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = _our_words(err)
    inp = err.get("input")
    shown = ""
    if _may_echo(inp, full, where, msg):
        shown = f" (got {inp!r})" if len(repr(inp)) < 80 else ""
    return f"{where}: {msg}{shown}"


def _may_echo(inp: Any, loc: tuple[Any, ...], where: str, msg: str) -> bool:
    """Whether a config error may quote the value it refused.

    Never under a secret-ish path (``…secrets``, ``…headers.…``, ``…token``; numbers too: a secret
    list given as one number is still the secret), never a value that came from the environment or
    a file, whole or in part, and never a URL (its userinfo, path or query may be a credential).
    """
    if "secret" in msg.lower() or _SECRETISH.search(where) or any(is_secret_name(str(p)) for p in loc):
        return False
    if isinstance(inp, bool | int | float):
        return True
    if not isinstance(inp, str) or isinstance(inp, EnvValue | FileValue | InterpolatedValue):
        return False
    return "://" not in inp and "@" not in inp


def _our_words(err: Mapping[str, Any]) -> str:
    """pydantic's message without its own vocabulary (``Value error, ``; union tags)."""
    msg = str(err.get("msg", "invalid value"))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "union_tag_invalid":
        return (
            f"unknown type {ctx.get('tag')!r} (known types: {str(ctx.get('expected_tags', '')).replace(chr(39), '')})"
        )
    if kind == "union_tag_not_found":
        return "needs a 'type'"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (a path of keys and list indexes below ``model``), or none.

    Walks the annotations, so the keys under a dict of models (``workspaces.<alias>``,
    ``webhook.sources.<name>``), a list of models, an optional model, a root model or a
    discriminated union (``bus``: pydantic's path holds the tag) are found like any other.
    """
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    found = _model_in(current)
    return sorted(_keys(found)) if found is not None else []


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the key written in a file: the alias when there is one (``group-by``)."""
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _step(annotation: Any, part: Any) -> Any:
    """The annotation of the value at key (or index, or union tag) ``part`` below ``annotation``."""
    tagged = _tagged_model(annotation, part)
    if tagged is not None:
        return tagged
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if issubclass(annotation, RootModel):
            return _step(annotation.model_fields["root"].annotation, part)
        field = _keys(annotation).get(str(part))
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _step(args[0], part)
    if origin in (dict, Mapping, MutableMapping) and len(args) == 2:
        return args[1]  # ``part`` is a key of the dict
    if origin in (list, tuple, set, frozenset, Sequence) and args and isinstance(part, int):
        return args[0]
    if origin in (Union, UnionType):
        for member in args:
            if isinstance(member, type) and member.__name__ == part:
                return member  # pydantic names the union member it tried
        for member in args:
            if member is not type(None):
                found = _step(member, part)
                if found is not None:
                    return found
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation stands for (through Annotated, Optional), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _model_in(args[0])
    if origin in (Union, UnionType):
        models = [m for m in (_model_in(a) for a in args if a is not type(None)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _tagged_model(annotation: Any, tag: Any) -> Any:
    """The member of a discriminated union whose ``type`` literal equals ``tag``."""
    for a in getattr(annotation, "__args__", ()):
        for m in (a, *getattr(a, "__args__", ())):
            if (
                isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and m.model_fields["type"].default == tag
            ):
                return m
    return None


UNREAD = (
    "its value comes from a reference this command does not read, and it cannot be checked without that "
    "value (config validate without --no-environment reads it)"
)
"""The line for a value that only failed because its reference was not read, when nothing else is wrong."""


def validation_error_lines(
    err: ValidationError, model: type[BaseModel], *, extra_keys: tuple[str, ...] = ()
) -> list[str]:
    """One line per problem, each naming the key path.

    An error about an unread reference's placeholder is not reported (the command that reads it
    checks the value), unless nothing else is wrong: then it is named (:data:`UNREAD`), so an
    invalid block never comes out with no line at all (silently dropped, or an empty message).

    ``extra_keys`` are further top-level keys that are valid elsewhere (connector sections): they
    are offered in "did you mean" for an unknown top-level key.
    """
    errors = err.errors()
    lines = [_describe(e, model, extra_keys) for e in errors if not _about_placeholder(e)]
    if lines:
        return lines
    unread = (e for e in errors if _about_placeholder(e, NotRead))
    return list(dict.fromkeys(f"{_shown_path(tuple(e.get('loc', ())))}: {UNREAD}" for e in unread))


def _shown_path(loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "bus" and loc[1] in ("sqlite", "kafka"):
        loc = (loc[0], *loc[2:])
    return _path(loc)


def _about_placeholder(err: Mapping[str, Any], kind: type[Unresolved] = Unresolved) -> bool:
    """Whether ``err`` is about a placeholder's value (an unknown key is wrong whatever its value)."""
    if err.get("type") == "extra_forbidden":
        return False
    value = err.get("input")
    if isinstance(value, kind):
        return True
    if isinstance(value, list | tuple):
        return any(isinstance(v, kind) for v in value)
    return False


def validate_block(
    model: type[Model], block: Mapping[str, Any], where: str, *, extra_keys: tuple[str, ...] = ()
) -> Model:
    """Validate a component block (e.g. a sink) with its own model; errors name ``where``.

    ``extra_keys``: further keys valid in the same block but validated elsewhere (a webhook
    source's generic keys beside its kind's options), offered for an unknown key with the model's.

    Raises:
        ConfigError: the block is invalid.
    """
    try:
        return model.model_validate(dict(block))
    except ValidationError as err:
        kept = _keep_unread(model, block, err)
        if kept is not None:
            return kept
        lines = [f"{where}.{line}" for line in validation_error_lines(err, model, extra_keys=extra_keys)]
        raise ConfigError("\n".join(lines)) from None


def _keep_unread(model: type[Model], block: Mapping[str, Any], err: ValidationError) -> Model | None:
    """The block, when its only errors are about unread references' placeholders in its own keys
    (``batch_max_records: ${N}``, ``url: ${URL}`` under ``config validate --no-environment``, or
    a command that does not read the sinks' references): validated without those keys, then
    holding their placeholders again. The value is checked by the command that reads it; the block
    stays configured (listed, its consumer group measured). None when anything else is wrong, or
    a required key is unread (its :data:`UNREAD` line is reported instead)."""
    errors = err.errors()
    if not errors or not all(len(e.get("loc", ())) == 1 and _about_placeholder(e) for e in errors):
        return None
    unread = {str(e["loc"][0]) for e in errors}
    try:
        partial = model.model_validate({k: v for k, v in block.items() if k not in unread})
    except ValidationError:
        return None
    return partial.model_copy(update={k: block[k] for k in unread if k in block})
