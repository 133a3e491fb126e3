"""``instantly-audit keys rotate NAME``: rotate an Instantly API key with a separate admin key, resumably.

::

    instantly-audit keys rotate zapier --config pipeline.yaml --dry-run
    instantly-audit keys rotate zapier --config pipeline.yaml --destination file:/run/secrets/zapier-key
    instantly-audit keys rotate security-poller --config pipeline.yaml --scopes audit_logs:read,api_keys:read --no-wait
    instantly-audit keys rotate security-poller --config pipeline.yaml --confirm     # resume, confirm, finish

Settings (config section ``rotation``; flags override)::

    rotation:
      admin_api_key_file: /run/secrets/instantly-admin-key   # or ${INSTANTLY_ADMIN_KEY}, or admin_api_key_vault: ...
      journal_dir: data/rotation
      grace_period_secs: 900
      keys:
        zapier: {workspace: acme, destination: "file:/run/secrets/zapier-instantly-key"}
        security-poller: {destination: "vault:secret/instantly/acme#api_key"}

The admin key is read from a secret source (environment, file or secret manager) — never from
the command line — and must differ from every workspace's pipeline key. Exit codes: 0 rotated
(or planned with ``--dry-run``), 3 waiting for ``--confirm`` or the grace period (re-run to
finish), 1 a step failed (re-run to resume), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connectors.instantly.config import workspaces
from pipeline.cli.base import CONFIG_HELP, config_path
from pipeline.cli.exit_codes import Exit
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PENDING = Exit.OK, Exit.FINDINGS, Exit.USAGE, Exit.INCOMPLETE


def _read_key_file(path: str) -> SecretStr:
    """The admin key from ``--admin-key-file`` (a Docker/Kubernetes secret file).

    Raises:
        ConfigError: unreadable or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--admin-key-file {path}: cannot read ({type(err).__name__})") from None
    if not text:
        raise ConfigError(f"--admin-key-file {path}: the file is empty")
    return SecretStr(text)


def build_rotation(
    args: argparse.Namespace, cfg: PipelineConfig, *, base_dir: Path, clock: Clock = SYSTEM_CLOCK, **kw: Any
) -> Any:
    """A :class:`~connectors.instantly.rotation.machine.KeyRotation` from the config and the flags.

    Raises:
        ConfigError: the rotation settings, the workspace, the admin key or the destination are missing or invalid.
    """
    from connectors.instantly.rotation.destinations import parse_destination
    from connectors.instantly.rotation.journal import journal_path
    from connectors.instantly.rotation.machine import KeyRotation
    from connectors.instantly.rotation.settings import RotationSettings
    from pipeline.config.vault import vault_settings

    settings = cfg.section("rotation", RotationSettings)
    known = workspaces(cfg)
    key_cfg = settings.keys.get(args.name)
    workspace = args.workspace or (key_cfg.workspace if key_cfg else None)
    if workspace is None:
        if len(known) != 1:
            raise ConfigError(f"--workspace: which workspace holds '{args.name}'? (known: {', '.join(known)})")
        workspace = next(iter(known))
    if workspace not in known:
        raise ConfigError(f"--workspace {workspace}: not in the config (known: {', '.join(known)})")
    admin_key = (_read_key_file(args.admin_key_file) if args.admin_key_file else None) or (
        key_cfg.admin_api_key if key_cfg else None) or settings.admin_api_key  # fmt: skip
    if admin_key is None:
        raise ConfigError("rotation needs an admin key: rotation.admin_api_key (${ENV}, admin_api_key_file or "
                          "admin_api_key_vault) or --admin-key-file")  # fmt: skip
    dest_spec = args.destination or (key_cfg.destination if key_cfg else None)
    if dest_spec is None:
        raise ConfigError(f"where should the new key go? --destination file:PATH|vault:REF or "
                          f"rotation.keys.{args.name}.destination")  # fmt: skip
    managers = dict(getattr(cfg, "secret_managers", None) or {})
    # a path on the command line is relative to where the command runs; one in the config to the config file
    destination = parse_destination(dest_spec, vault=(lambda: vault_settings(managers)) if managers else None,
                                    base_dir=Path.cwd() if args.destination else base_dir)  # fmt: skip
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()] if args.scopes else (
        key_cfg.scopes if key_cfg else None)  # fmt: skip
    jdir = settings.journal_dir if settings.journal_dir.is_absolute() else base_dir / settings.journal_dir
    journal = Path(args.journal) if args.journal else journal_path(jdir, workspace, args.name)
    ws_cfg = known[workspace]
    return KeyRotation(
        name=args.name,
        source_id=workspace,
        admin=ws_cfg.model_copy(update={"api_key": admin_key}),
        destination=destination,
        journal=journal,
        clock=clock,
        scopes=scopes,
        grace_secs=args.grace_period if args.grace_period is not None else settings.grace_period_secs,
        confirm=args.confirm,
        wait=not args.no_wait,
        verify_attempts=settings.verify_attempts,
        verify_delay_secs=settings.verify_delay_secs,
        forbidden_secrets=[w.api_key.get_secret_value() for w in known.values()],
        out=lambda line: print(line, flush=True),
        **kw,
    )


def cmd_rotate(args: argparse.Namespace) -> int:
    """Run (or plan) the rotation; return the exit code."""
    from pipeline.config.loader import load_config, resolve_under

    path = config_path(args.config)
    # the workspaces' keys, the rotation settings (an admin key) and Vault: no receiver or sink secret
    cfg = load_config(path, resolve=resolve_under(("workspaces",), ("rotation",), ("secret_managers",)))
    rotation = build_rotation(args, cfg, base_dir=path.resolve().parent)
    outcome = asyncio.run(rotation.plan() if args.dry_run else rotation.run())
    return EXIT_PENDING if outcome.status == "pending" else EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a subcommand: rotate", file=sys.stderr)
        return EXIT_USAGE

    return show


def register(subparsers: Any) -> None:
    """Add ``keys rotate`` to the CLI."""
    p = subparsers.add_parser("keys", help="manage Instantly API keys (rotate)",
                              description="Manage Instantly API keys with a separate admin key.")  # fmt: skip
    sub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    r = sub.add_parser(
        "rotate",
        help="rotate an API key: create, verify, store, confirm, delete the old one (resumable)",
        description="Create a new key with the same (or --scopes narrowed) scopes, verify it, store it in the "
        "destination (0600 file or Vault), wait for --confirm or the grace period, then delete the old key. "
        "Every step is journaled; run the same command again to resume. Exit 0 done, 3 waiting for "
        "confirmation, 1 failed, 2 usage/config error.",
    )
    r.add_argument("name", metavar="NAME", help="the key's name in Instantly (exactly one live key may have it)")
    r.add_argument("--config", "-c", help=f"pipeline config file (workspaces, rotation settings); {CONFIG_HELP}")
    r.add_argument("--workspace", metavar="ID", help="the configured workspace holding the key")
    r.add_argument("--scopes", metavar="S1,S2", help="narrow the new key to these scopes (comma-separated)")
    r.add_argument("--destination", metavar="SPEC", help="file:PATH or vault:<mount>/<path>#<field>")
    r.add_argument("--admin-key-file", metavar="PATH", help="read the admin key from this file")
    r.add_argument("--journal", metavar="PATH", help="rotation journal (default: rotation.journal_dir/...)")
    r.add_argument("--grace-period", type=float, metavar="SECS", help="wait this long after storing (default 900)")
    r.add_argument("--confirm", action="store_true", help="consumers use the new key: delete the old one now")
    r.add_argument("--no-wait", action="store_true", help="do not sleep through the grace period; exit 3 instead")
    r.add_argument("--dry-run", action="store_true", help="print the plan (read-only)")
    r.set_defaults(func=cmd_rotate)
    p.set_defaults(func=_usage(p))
