"""The ``instantly-audit`` command line: the runtime's commands plus those connectors register.

Exit codes follow one contract (:mod:`pipeline.cli.exit_codes`): 0 ok, 1 findings or a failed
run, 2 usage or configuration error, 3 could not run to the end, 130 interrupted, 143
terminated (SIGTERM). Expected
conditions (a bad config, an unreadable secret file, a corrupt or locked bus file, a busy port)
print one line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Sequence

import orjson

from pipeline import __version__
from pipeline.cli import sinks_cli, status_cli, terminate
from pipeline.cli.base import CONFIG_HELP, command_plugins, config_path, describe_section
from pipeline.cli.exit_codes import Exit
from pipeline.completeness import cli as gaps_cli
from pipeline.config.model import PipelineConfig
from pipeline.errors import BusError, ConfigError, PipelineError, UsageError
from pipeline.observability.logs import RedactingStream, redact_registered, setup_logging
from pipeline.replay import cli as replay_cli
from pipeline.rules import cli as rules_cli
from pipeline.sources.base import source_plugins

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = Exit.OK, Exit.FINDINGS, Exit.USAGE
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The runtime's own command modules; connectors add theirs through the ``instantly_audit.commands``
# registry. Each has register(subparsers) and sets func=handler(args) -> int.
RUNTIME_COMMANDS = (rules_cli, replay_cli, sinks_cli, status_cli, gaps_cli)


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line on a usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        if message.startswith("unrecognized arguments:") and _GLOBAL_FLAG.search(message):
            message += " (-v, -vv and --log-level go before the command: instantly-audit -v COMMAND …)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


_GLOBAL_FLAG = re.compile(r"(?<=[: ])(-v+|--verbose|--log-level(=\S*)?)(?= |$)")
"""The top-level options a user tends to put after the command (``config validate f.yaml -v``)."""


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config, resolve_nothing

    path = config_path(args.file)
    try:
        cfg = load_config(path, resolve=resolve_nothing if args.no_environment else None)
    except ConfigError as err:
        if args.format != "json":
            raise
        doc = {"file": str(path), "valid": False, "environment": not args.no_environment,
               "errors": _config_error_lines(err)}  # fmt: skip
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_USAGE
    warnings = (
        []
        if (cfg.sections or cfg.sinks or cfg.webhook) and any_source(cfg)
        else ["the config polls no workspace and has no webhook receiver: nothing will reach the bus"]
    )
    if not cfg.sinks:
        warnings.append("no sinks: events and alerts stay on the bus (replay can still read them)")
    problems: list[str] = []
    if args.check_sinks:
        problems += asyncio.run(_check_sinks(cfg))
    parts = [f"bus {cfg.bus.type}", *(describe_section(k, v) for k, v in sorted(cfg.sections.items()))]
    summary = f"{', '.join(p for p in parts if p)}, {len(cfg.sinks)} sink(s)"
    if args.format == "json":
        doc = {"file": str(path), "valid": True, "environment": not args.no_environment, "summary": summary,
               "warnings": warnings, "sink_checks": problems}  # fmt: skip
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for problem in problems:
            print(f"sink check failed: {problem}", file=sys.stderr)
        print(f"{path}: ok{' (structure only: no secret read)' if args.no_environment else ''} — {summary}")
    return Exit.FINDINGS if problems else Exit.OK


def _config_error_lines(err: ConfigError) -> list[str]:
    """One line per problem, with registered secrets and URL credentials removed (no shape pass:
    ``….api_key: environment variable … is not set`` keeps its words; config errors never quote a
    secret-named value, pipeline/config/base.py)."""
    return [redact_registered(line) for line in str(err).splitlines()]


def any_source(cfg: PipelineConfig) -> bool:
    """Whether anything feeds the bus: a connector section with entries, or the webhook receiver."""
    if cfg.webhook is not None:
        return True
    return any(bool(getattr(v, "root", None)) for v in cfg.sections.values())


async def _check_sinks(cfg: PipelineConfig) -> list[str]:
    from pipeline.topology import check_sinks

    problems: list[str] = await check_sinks(cfg)
    return problems


def _stopped_before_start(signum: int, frame: object) -> None:
    """SIGTERM while the config loads (before the event loop catches it): nothing started, exit 0."""
    os._exit(0)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_config, resolve_under

    if not args.once:
        signal.signal(signal.SIGTERM, _stopped_before_start)  # replaced by the loop's handler in run_pipeline
    from pipeline.topology import run_pipeline

    path = config_path(args.config)
    roles = set(args.role or ["all"])
    cfg = load_config(path, resolve=None if "all" in roles else resolve_under(*role_sections(roles)))
    if args.log_level:
        cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"level": args.log_level})})
    code: int = asyncio.run(run_pipeline(cfg, once=args.once, roles=roles, config_path=path))
    return code


SHARED_SECTIONS: tuple[tuple[str, ...], ...] = (("bus",), ("secret_managers",), ("telemetry",), ("service",))
"""What every role reads: the bus (a Kafka password), Vault, telemetry (OTLP headers), the service port."""


def role_sections(roles: set[str]) -> list[tuple[str, ...]]:
    """The config sections whose secrets the given roles use: a webhook pod never reads the Instantly
    key, a poller never reads a sink token (each role's Kubernetes pod mounts only its own Secret)."""
    out = list(SHARED_SECTIONS)
    if "pollers" in roles:
        out += [(s,) for plugin in source_plugins().values() for s in plugin.sections]
    out += [(r,) for r in ("rules", "sinks", "webhook") if r in roles]
    return out


def _cmd_health(args: argparse.Namespace) -> int:
    """GET /healthz on the service port the config names (the container health check)."""
    import urllib.error
    import urllib.request

    from pipeline.config.loader import load_config, resolve_nothing

    if args.port is not None and not 0 < args.port < 65536:
        print(f"health: --port {args.port}: give the port the running process listens on (1-65535)", file=sys.stderr)
        return Exit.USAGE
    if args.port and not args.config:  # the port is all it needs: no config to find (127.0.0.1)
        host, port = "127.0.0.1", args.port
    else:
        path = config_path(args.config)
        cfg = load_config(path, resolve=resolve_nothing)
        host = "127.0.0.1" if cfg.service.host in ("0.0.0.0", "::", "") else cfg.service.host  # noqa: S104 - matched, not bound
        port = args.port or cfg.service.port
        if not port:
            print(f"health: no port to probe: service.port is 0 in {path}, so the running process listens on a "
                  "free port it picks at each start (its log line 'Service port open' gives it as \"port\"); "
                  "give it with --port N", file=sys.stderr)  # fmt: skip
            return Exit.USAGE
    url = f"http://{host}:{port}/{args.check}"
    where = f"GET /{args.check} on {host}:{port}"  # not the URL: output redaction fingerprints its path
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            ok = resp.status == 200
    except urllib.error.HTTPError as err:  # answered, but not 200 (/readyz: 503 while a check fails)
        print(f"health: {where}: HTTP {err.code}", file=sys.stderr)
        return Exit.FINDINGS
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ConnectionRefusedError):
            reason = "nothing listens there (connection refused); is `instantly-audit run` up with this service port?"
        elif isinstance(reason, TimeoutError):
            reason = f"no answer within {args.timeout:g}s"
        print(f"health: {where}: {reason}", file=sys.stderr)
        return Exit.FINDINGS
    print(f"health: {where}: {'ok' if ok else 'not ok'}")
    return Exit.OK if ok else Exit.FINDINGS


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return Exit.OK


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the commands of every installed module."""
    p = _Parser(
        prog="instantly-audit",
        description=(
            "Security audit pipeline for Instantly.ai workspaces: polls audit logs, API keys, members, "
            "webhooks and groups; normalizes changes into events on a bus; raises alerts; delivers to SIEMs; "
            "replays any range."
        ),
    )
    p.add_argument("--version", action="version", version=f"instantly-audit {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v: INFO, -vv: DEBUG)")
    p.add_argument("--log-level", choices=LEVELS, type=str.upper, help="log level (overrides the config's)")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = p.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )

    run = sub.add_parser(
        "run",
        help="run the pipeline (pollers, rules, sinks, webhook receiver) from a config file",
        description="Run the pipeline until SIGTERM/SIGINT (then flush and stop), or once with --once.",
    )
    run.add_argument("--config", "-c", help=CONFIG_HELP)
    run.add_argument(
        "--once",
        action="store_true",
        help="poll every stream once, process and deliver, then exit (1 if a workspace was refused or a sink failed)",
    )
    run.add_argument(
        "--role",
        action="append",
        choices=["all", "pollers", "rules", "sinks", "webhook"],
        help="run only these roles (repeatable); separate processes can share one Kafka cluster",
    )
    run.set_defaults(func=_cmd_run)

    cfg = sub.add_parser("config", help="configuration tools", description="Configuration tools.")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser, required=True)
    val = cfg_sub.add_parser(
        "validate",
        help="validate a config file (and optionally reach each sink)",
        description="Validate a config file with the same models every command uses: YAML, types, unknown keys, "
        "secrets (env/file/vault), every sink, the webhook receiver, the rules, the connectors' sections. Exit 0 "
        "when valid, 2 otherwise, 1 when --check-sinks could not reach a sink.",
    )
    val.add_argument("file", nargs="?", help=CONFIG_HELP)
    val.add_argument("--check-sinks", action="store_true", help="also run each sink's health check")
    val.add_argument(
        "--no-environment",
        action="store_true",
        help="check the structure without reading any environment variable, secret file or Vault (for CI linting)",
    )
    val.add_argument("--format", choices=["text", "json"], default="text")
    val.set_defaults(func=_cmd_config_validate)

    health = sub.add_parser(
        "health", help="check the running process's /healthz (or /readyz) on the port its config names",
        description="GET /healthz (or /readyz) of a running process (the container HEALTHCHECK). Exit 0: it "
        "answered 200; 1: it did not answer, or answered another status (/readyz: 503 while not ready); 2: usage or "
        "configuration error (an invalid config, or service.port 0 with no --port: the process picked a free port).",
    )  # fmt: skip
    health.add_argument("--config", "-c", help=CONFIG_HELP)
    health.add_argument("--check", choices=["healthz", "readyz"], default="healthz")
    health.add_argument("--timeout", type=float, default=4.0)
    health.add_argument(
        "--port",
        type=int,
        help="the service port (default: service.port of the config); without --config, "
        "probe 127.0.0.1:PORT and read no config",
    )
    health.set_defaults(func=_cmd_health)

    comp = sub.add_parser(
        "completion", help="print a shell completion script", description="Print a completion script: "
        "eval \"$(instantly-audit completion bash)\" (or zsh / tcsh).",
    )  # fmt: skip
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    comp.set_defaults(func=_cmd_completion)

    for mod in (*RUNTIME_COMMANDS, *command_plugins().values()):
        mod.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code.

    Everything a command prints to stderr (its error lines) goes through the log redaction
    (:class:`RedactingStream`): no upstream text quoted in an error reaches the terminal as-is.
    """
    err = sys.stderr
    sys.stderr = RedactingStream(err)
    try:
        return _main(argv)
    finally:
        sys.stderr = err


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if args.verbose and not args.log_level:
        args.log_level = "DEBUG" if args.verbose > 1 else "INFO"
    if args.log_level and args.command != "run":  # run configures logging from the config (overridden)
        setup_logging("auto", args.log_level)
    previous = terminate.install() if _runs_to_an_end(args) else None
    try:
        return _run_command(args)
    finally:
        if previous is not None:
            terminate.uninstall(previous)


def _run_command(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
        if terminate.terminated():
            return _terminated()
        return code
    except UsageError as err:  # an argument, not the config file: said as argparse says it
        print(f"instantly-audit {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as err:
        # straight to the terminal: the stream's shape pass would eat the key paths' words
        out = sys.stderr.raw if isinstance(sys.stderr, RedactingStream) else sys.stderr
        for line in _config_error_lines(err):
            print(f"config error: {line}", file=out)
        return EXIT_USAGE
    except BusError as err:
        print(f"bus error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except PipelineError as err:  # a SourceError's hint names the host and the setting to fix
        hint = getattr(err, "hint", None)
        print(f"error: {err}" + (f" — {hint}" if hint else ""), file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as err:  # an expected OS error: a busy port, an unreadable file — one line, no traceback
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or type(err).__name__}{where}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        if terminate.terminated():
            return _terminated()
        print("interrupted", file=sys.stderr)
        return Exit.INTERRUPTED


ENDING_COMMANDS = frozenset({"replay", "check", "gaps", "status", "webhooks", "keys"})
"""Commands that run to an end (``run --once`` too): SIGTERM stops them like Ctrl-C (exit 143)."""


def _runs_to_an_end(args: argparse.Namespace) -> bool:
    if args.command == "run":
        return bool(getattr(args, "once", False))
    return args.command in ENDING_COMMANDS


def _terminated() -> int:
    print("terminated", file=sys.stderr)
    return Exit.TERMINATED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
