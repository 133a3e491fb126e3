"""How connectors add commands to the CLI: a :class:`CommandPlugin` in the
``instantly_audit.commands`` entry point group (a module with ``register(subparsers)`` will do).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.errors import ConfigError
from pipeline.registry import COMMANDS, load_group

SubParsers = argparse._SubParsersAction  # argparse's own type for ``add_subparsers()``
CONFIG_ENV = "INSTANTLY_AUDIT_CONFIG"
DEFAULT_CONFIG = Path("instantly-audit.yaml")
CONFIG_HELP = f"YAML config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})"


PROGRAM = "instantly-audit"


def program_name(argv0: str | None = None, *, cwd: str | None = None) -> str:
    """How to type this command again, for a "Next: …" hint that works when pasted.

    ``instantly-audit`` when that is what ``PATH`` finds; else the executable's path, relative when
    it is under the working directory (``.venv/bin/instantly-audit`` after ``make demo``), else
    absolute; ``python -m pipeline.cli`` when started as a module.
    """
    arg = sys.argv[0] if argv0 is None else argv0
    if not arg or os.path.basename(arg) in ("__main__.py", "main.py", "-c"):
        return f"{_as_typed(sys.executable or 'python', cwd)} -m pipeline.cli"
    return _as_typed(arg, cwd)


def _as_typed(arg: str, cwd: str | None) -> str:
    name = os.path.basename(arg)
    if os.sep not in arg:  # found on PATH by the shell
        return arg
    path = os.path.abspath(arg)
    found = shutil.which(name)
    if found and os.path.abspath(found) == path:
        return name
    here = os.path.abspath(cwd or os.getcwd())
    if path.startswith(here + os.sep):
        rel = os.path.relpath(path, here)
        return rel if os.sep in rel else f".{os.sep}{rel}"
    return path


def config_path(given: str | None) -> Path:
    """The config file: ``--config``, else ``$INSTANTLY_AUDIT_CONFIG``, else ``./instantly-audit.yaml``.

    Raises:
        ConfigError: none of them names a file.
    """
    if given:
        return Path(given)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    raise ConfigError(f"no config file: give --config FILE, set {CONFIG_ENV}, or create ./{DEFAULT_CONFIG}")


@runtime_checkable
class CommandPlugin(Protocol):
    """Adds one or more sub-commands; each sets ``func=handler(args) -> int`` (the exit code)."""

    def register(self, subparsers: Any) -> None:
        """Add the sub-commands to ``subparsers``."""


def command_plugins() -> dict[str, CommandPlugin]:
    """Every installed command plugin by entry point name.

    Raises:
        ConfigError: an entry does not provide ``register``.
    """
    out: dict[str, CommandPlugin] = {}
    for name, plugin in load_group(COMMANDS).items():
        if not isinstance(plugin, CommandPlugin):
            raise ConfigError(f"command plugin {name!r} has no register(subparsers)")
        out[name] = plugin
    return out


def describe_section(key: str, value: Any) -> str:
    """``3 workspaces`` for a mapping-like section, ``check`` for any other (for ``config validate``)."""
    root = getattr(value, "root", None)
    if isinstance(root, dict):
        return f"{len(root)} {key}" if len(root) != 1 else f"1 {key.rstrip('s')}"
    return ""
