"""Rule version lock: a content hash per rule, so a rule cannot change without a version bump.

``instantly-audit rules lock`` writes ``{"rules": {<id>: {"version": n, "hash": "sha256:..."}}}``
(the built-in packs' rules to each pack's ``lock_file``; with ``--rules FILE`` the user's rules
to ``--output`` or ``rules.lock.json`` beside FILE). ``rules lock --check`` compares without
writing and fails when a rule changed but kept its version, when a rule is not locked yet, or
when the lock is stale (a bumped or removed rule not recorded).

The hash of a YAML rule covers its validated content except ``version``, ``enabled`` and
``tests`` (and options added to the language later while they keep their default); the hash of a
Python rule covers the syntax tree of its class (formatting and comments do not count, the code
and its metadata do).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import ConfigError
from pipeline.rules.base import Rule


@dataclass(frozen=True, slots=True)
class Locked:
    """What the lock records for one rule."""

    version: int
    hash: str


def content_hash(rule: Rule) -> str:
    """The rule's content hash (see the module docstring).

    Raises:
        ConfigError: a Python rule's source cannot be read.
    """
    spec = getattr(rule, "spec", None)
    if spec is not None and hasattr(spec, "model_dump"):
        doc = spec.model_dump(mode="json", by_alias=True, exclude={"version", "enabled", "tests"})
        _drop_later_defaults(doc)
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    else:
        try:
            src = textwrap.dedent(inspect.getsource(type(rule)))
        except (OSError, TypeError) as err:
            raise ConfigError(f"rule {rule.meta.id}: cannot read its source to lock it ({err})") from None
        data = ast.dump(ast.parse(src), include_attributes=False).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _drop_later_defaults(doc: dict[str, Any]) -> None:
    """Leave out options added to the rule language after rules were locked while they keep their default
    (a correlation entry's ``opens: false``), so adding an option changes no existing rule's hash."""
    corr = doc.get("correlation")
    for entry in corr.get("rules") or () if isinstance(corr, dict) else ():
        if isinstance(entry, dict) and entry.get("opens") is False:
            del entry["opens"]


def current(rules: Iterable[Rule]) -> dict[str, Locked]:
    """The lock entries of ``rules``, by id.

    Raises:
        ConfigError: a Python rule's source cannot be read.
    """
    return {r.meta.id: Locked(r.meta.version, content_hash(r)) for r in sorted(rules, key=lambda r: r.meta.id)}


def read_lock(path: Path) -> dict[str, Locked]:
    """The entries of a lock file (empty when it does not exist).

    Raises:
        ConfigError: the file is not a lock file.
    """
    if not path.exists():
        return {}
    try:
        doc = orjson.loads(path.read_bytes())
        return {rid: Locked(int(v["version"]), str(v["hash"])) for rid, v in doc["rules"].items()}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: not a rules lock file ({type(err).__name__}: {err})") from None


def write_lock(path: Path, entries: Mapping[str, Locked]) -> None:
    """Write the lock file (sorted, one rule per line for readable diffs).

    Raises:
        ConfigError: the file cannot be written.
    """
    body: dict[str, Any] = {rid: {"version": e.version, "hash": e.hash} for rid, e in sorted(entries.items())}
    lines = ",\n".join(f'    "{rid}": {orjson.dumps(v).decode()}' for rid, v in body.items())
    try:
        path.write_text('{\n  "rules": {\n' + lines + "\n  }\n}\n", encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot write the lock ({err.strerror or type(err).__name__})") from None


def unbumped(now: Mapping[str, Locked], locked: Mapping[str, Locked]) -> list[str]:
    """One line per rule whose content changed while its version did not grow."""
    return [
        f"{rid}: changed without a version bump (version {e.version}; bump it to {locked[rid].version + 1})"
        for rid, e in now.items()
        if rid in locked and e.hash != locked[rid].hash and e.version <= locked[rid].version
    ]


def check(
    now: Mapping[str, Locked],
    locked: Mapping[str, Locked],
    lock_path: Path,
    command: str = "instantly-audit rules lock",
) -> list[str]:
    """Every difference between the rules and their lock, one line each (empty: in sync).

    ``command`` is the one that updates this lock (the user's rules need their ``--rules FILE``:
    without it ``rules lock`` locks the installed packs instead).
    """
    out = unbumped(now, locked)
    fix = f"run `{command}` to update {lock_path}"
    for rid, e in now.items():
        old = locked.get(rid)
        if old is None:
            out.append(f"{rid}: not in the lock ({fix})")
        elif e.hash != old.hash and e.version > old.version:
            out.append(f"{rid}: version bumped to {e.version} but the lock still has {old.version} ({fix})")
        elif e.hash == old.hash and e.version != old.version:
            out.append(f"{rid}: version {e.version} but the lock has {old.version} ({fix})")
    out += [f"{rid}: in the lock but no longer a rule ({fix})" for rid in locked if rid not in now]
    return out
