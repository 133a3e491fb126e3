"""Wires the stages in flow order — the first file to read.

    pollers (one per workspace) ─┐
    webhook receiver ────────────┴─► bus: instantly.events.v1 ─► rules ─► instantly.alerts.v1
                                                       │                         │
                                                       └──────► sinks (one consumer group each) ◄┘

``run_pipeline`` opens the bus, builds each role's components from the validated config
and either runs everything once (``--once``: poll every stream, evaluate the rules,
deliver every sink, exit) or supervises long-running tasks until SIGTERM/SIGINT, then
stops them cleanly (each finishes its batch; sinks commit only what was confirmed).
The supervisor is the only place that catches bare ``Exception``: a crashed task is
logged and restarted with backoff, so one failing workspace or sink never stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.bus.base import EVENTS_TOPIC, Bus, reclaiming
from pipeline.bus.factory import open_bus
from pipeline.clock import SYSTEM_CLOCK, Clock
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError, PipelineError
from pipeline.observability.health import HealthRegistry, get_health, set_health
from pipeline.observability.logs import get_logger, redact_text, register_secret, setup_logging
from pipeline.observability.telemetry import Telemetry, get_telemetry, set_telemetry, setup_telemetry
from pipeline.redaction.urls import set_url_path_hosts
from pipeline.sources.base import Pausable, failure_lines, source_plugins
from pipeline.supervision import apply_retention, monitor_bus, supervise, trim_bus

log = get_logger("topology")
ROLES = ("pollers", "rules", "sinks", "webhook")
"""How often the long-running process measures consumer lag and checks the bus."""


def register_config_secrets(cfg: PipelineConfig) -> None:
    """Teach the redaction every secret in the config (every section, every connector) and its URL allowlist."""
    for secret in _walk_secrets(cfg):
        register_secret(secret)
    set_url_path_hosts(cfg.redaction.url_path_hosts)


def _walk_secrets(node: Any) -> list[str]:
    from pydantic import BaseModel, SecretStr

    out: list[str] = []
    if isinstance(node, SecretStr):
        out.append(node.get_secret_value())
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            out += _walk_secrets(getattr(node, name))
    elif isinstance(node, dict):
        for v in node.values():
            out += _walk_secrets(v)
    elif isinstance(node, list | tuple):
        for v in node:
            out += _walk_secrets(v)
    return out


async def check_sinks(cfg: PipelineConfig) -> list[str]:
    """Run each sink's health check; return one line per unreachable sink."""
    from pipeline.delivery.registry import build_sink

    problems: list[str] = []
    for sid, scfg in cfg.sinks.items():
        try:
            sink = build_sink(sid, scfg)
            async with sink:
                await sink.healthcheck()
        except ConfigError as err:
            problems += str(err).splitlines()
        except PipelineError as err:
            problems.append(f"sinks.{sid}: health check failed: {err}")
    # Printed as-is (text and ``--format json``): a health check may quote a destination's body.
    return [redact_text(p) for p in problems]


class Pipeline:
    """The components of the selected roles, built from config on an open bus.

    Every component gets ``telemetry`` and ``health`` at construction (default: the process's
    current ones, read once here).
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        bus: Bus,
        roles: set[str],
        clock: Clock = SYSTEM_CLOCK,
        *,
        once: bool = False,
        config_dir: Path | None = None,
        telemetry: Telemetry | None = None,
        health: HealthRegistry | None = None,
    ):
        self.cfg = cfg
        self.telemetry = telemetry if telemetry is not None else get_telemetry()
        self.health = health if health is not None else get_health()
        self.config_dir = config_dir
        self.bus = bus
        self.roles = set(ROLES) if "all" in roles else set(roles)
        self.once = once
        if once:
            self.roles.discard("webhook")  # a receiver has nothing to do in a one-shot run
        self.clock = clock
        self.pollers: list[Any] = []
        self.assignment: Any = None
        """Kafka with ``share_pollers``: the workspaces this replica polls come from the control group."""
        self.backpressure: Any = None
        """With ``bus.max_consumer_lag``: the gate the pollers wait at (:mod:`pipeline.sources.backpressure`)."""
        self.rules: Any = None
        self.runners: list[Any] = []
        self.receiver: Any = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Pipeline:
        try:
            await self._build()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _build(self) -> None:
        cfg, bus, clock, tel, health = self.cfg, self.bus, self.clock, self.telemetry, self.health
        # Writers claim their ids (fencing what a killed predecessor left open) before anything
        # here reads state: on Kafka a state read waits for every transaction open when it began,
        # and a zombie's is aborted only when its id is claimed again (or after the transaction
        # timeout, 60 s). So the pollers enter first, the rules worker claims its id, and the
        # workspace names are read last.
        bound = getattr(cfg.bus, "max_consumer_lag", None)
        if "pollers" in self.roles and not self.once and bound is not None:
            from pipeline.sources.backpressure import Backpressure, watched_groups

            interval = float(getattr(cfg.bus, "backpressure_check_secs", 5.0))
            self.backpressure = Backpressure(bus, watched_groups(cfg), bound, interval_secs=interval, telemetry=tel)
        if "pollers" in self.roles and not self.once and _shares_pollers(cfg, bus):
            from pipeline.sources.assignment import WorkspaceAssignment

            plugins = list(source_plugins().values())

            def build_discovered(record: dict[str, object]) -> Any:
                for p in plugins:
                    build = getattr(p, "build_discovered", None)
                    if build is not None and record.get("plugin") == p.name:
                        return build(cfg, bus, clock, record, telemetry=tel, health=health)
                return None

            self.assignment = WorkspaceAssignment(
                bus,  # type: ignore[arg-type]  # _shares_pollers checked the extra methods
                lambda: [s for p in plugins for s in p.build(cfg, bus, clock, telemetry=tel, health=health)],
                build_discovered=build_discovered,
                backpressure=self.backpressure,
            )
        elif "pollers" in self.roles:
            if self.once and _shares_pollers(cfg, bus):
                await _refuse_beside_running_pollers(bus)
            for plugin in source_plugins().values():
                for source in plugin.build(cfg, bus, clock, telemetry=tel, health=health):
                    if self.backpressure is not None and isinstance(source, Pausable):
                        source.backpressure = self.backpressure
                    self.pollers.append(await self._stack.enter_async_context(source))
        if "rules" in self.roles:
            from pipeline.rules.worker import RulesWorker

            base_dir = self.config_dir or cfg.config_dir
            self.rules = RulesWorker(bus, cfg.rules, clock=clock, base_dir=base_dir, telemetry=tel)
            # run() closes its consumer when it ends, run_once() keeps it for the next call: close it
            # with the topology, or `run --once` leaves an unclosed consumer and a group member that
            # the next run's join waits for (a whole session timeout).
            self._stack.push_async_callback(self.rules.close)
            await bus.fence(self.rules.txn_id)
        if "sinks" in self.roles:
            from pipeline.delivery.registry import build_sink
            from pipeline.delivery.runner import SinkRunner

            for sid, scfg in cfg.sinks.items():
                if not scfg.enabled:
                    continue
                for secret in _walk_secrets(scfg):
                    register_secret(secret)
                runner = SinkRunner(bus, build_sink(sid, scfg), scfg, clock=clock, telemetry=tel, health=health)
                self.runners.append(await self._stack.enter_async_context(runner))
        if "webhook" in self.roles and cfg.webhook is not None:
            from pipeline.sources.webhook.receiver import WebhookReceiver

            wcfg = cfg.webhook
            for secret in _walk_secrets(wcfg):
                register_secret(secret)
            self.receiver = WebhookReceiver(wcfg, bus, clock=clock, telemetry=tel, health=health)
            await self.receiver.start()
            self._stack.push_async_callback(self.receiver.stop)
        await self.name_workspaces()

    async def name_workspaces(self) -> None:
        """Teach the telemetry each configured workspace's alias (from what the sources keep on the
        bus), so metrics recorded with the workspace id alone carry the ``workspace`` alias too."""
        for plugin in source_plugins().values():
            try:
                ids = await plugin.workspace_ids(self.cfg, self.bus)
            except ConfigError:
                continue  # a section this process does not use (its secrets are not resolved)
            for alias, workspace_id in ids.items():
                self.telemetry.name_workspace(workspace_id, alias)

    async def run_once(self) -> dict[str, Any]:
        """Poll every stream once, evaluate the rules, deliver every sink; return counts.

        ``summary["problems"]`` lists, one line each, every workspace stream that was refused or
        failed and every sink that did not confirm everything: ``run --once`` exits 1 on any.
        """
        summary: dict[str, Any] = {"published": {}, "alerts": 0, "delivered": {}, "problems": []}
        problems: list[str] = summary["problems"]
        for p in self.pollers:
            try:
                summary["published"][p.source_id] = await p.poll_once()
            except PipelineError as err:
                log.error("Poll failed", extra={"workspace": p.source_id, "error": str(err)})
                summary["published"][p.source_id] = {"error": str(err)}
                problems.append(f"workspace {p.source_id}: poll failed: {err}")
            problems += [f"workspace {p.source_id}: {line}" for line in failure_lines(getattr(p, "last_failures", {}))]
        # Each stage below reads up to the end it sees when it starts. On Kafka a commit becomes
        # readable only once the broker wrote its markers, a moment after the commit returned:
        # without waiting, the rules (or the sinks) of this very run could stop short of the last
        # events (alerts) and leave them to the next run.
        if self.rules is not None:
            await self.bus.wait_visible()
            summary["alerts"] = await self.rules.run_once()
        if self.runners:
            await self.bus.wait_visible()
        for r in self.runners:
            stats = await r.run_once()
            summary["delivered"][r.sink_id] = getattr(stats, "delivered", stats)
            if not r.confirmed_all():
                problems.append(f"sink {r.sink_id}: not everything was confirmed (destination failing; see the log)")
        await trim_bus(self.bus, self.telemetry)  # a `run --once` from cron keeps the bus to its retention too
        return summary

    def consumer_groups(self) -> list[tuple[str, list[str]]]:
        """The consumer groups of this process and the topics each reads (for the lag gauge)."""
        out: list[tuple[str, list[str]]] = []
        if self.rules is not None:
            out.append((self.rules.group, [EVENTS_TOPIC]))
        out += [(r.group, list(r.topics)) for r in self.runners]
        return out

    def tasks(self, stop: asyncio.Event) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The long-running loops of the selected roles."""
        out: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for p in self.pollers:
            out.append((f"poller:{p.source_id}", reclaiming(self.bus, getattr(p, "txn_id", None), p.run, stop)))
        if self.assignment is not None:
            out.append(("pollers:assignment", functools.partial(self.assignment.run, stop)))
        if self.backpressure is not None:
            out.append(("pollers:backpressure", functools.partial(self.backpressure.run, stop)))
        if self.rules is not None:
            out.append(("rules", functools.partial(self.rules.run, stop)))
        for r in self.runners:
            out.append((f"sink:{r.sink_id}", functools.partial(r.run, stop)))
        return out


async def _refuse_beside_running_pollers(bus: Bus) -> None:
    """``run --once`` polls every workspace itself: beside live replicas of the poller group it would
    claim their writer ids (each would fail its next transaction and reclaim its workspace after a
    backoff). Refuse instead, naming what runs.

    Raises:
        PipelineError: the poller group has members.
    """
    from pipeline.sources.assignment import CONTROL_GROUP

    members = await bus.describe_group(CONTROL_GROUP)  # type: ignore[attr-defined]  # _shares_pollers checked
    if members:
        raise PipelineError(
            f"{len(members)} running replica(s) of the poller group poll these workspaces "
            f"({', '.join(sorted(m.split(' ')[0] for m in members))}); `run --once` would fence their writers. "
            "Stop them first, run `--once --role rules` or `--role sinks` only, or read `instantly-audit status`"
        )


def _shares_pollers(cfg: PipelineConfig, bus: Bus) -> bool:
    """Kafka replicas of ``--role pollers`` share the workspaces (unless ``bus.share_pollers: false``)."""
    from pipeline.sources.assignment import can_share

    return bool(getattr(cfg.bus, "share_pollers", False)) and can_share(bus)


async def run_pipeline(
    cfg: PipelineConfig,
    *,
    once: bool = False,
    roles: set[str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    stop: asyncio.Event | None = None,
    configure_logging: bool = True,
    config_dir: Path | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the pipeline; return the process exit code.

    SIGTERM/SIGINT are caught from the first moment (not only once every component is built). A
    stop asked for while the pipeline is still starting (connecting to the bus, claiming writer
    ids, reading state) cancels the start-up and exits 0: nothing was polling, evaluating or
    delivering yet, so nothing is lost, and a start-up stuck on an unreachable bus never holds a
    SIGTERM hostage. A stop after start-up finishes in-flight work first.
    """
    stop = stop or asyncio.Event()
    if not once:
        _catch_stop_signals(stop)
    if configure_logging:
        setup_logging(cfg.logging.format, cfg.logging.level)
    register_config_secrets(cfg)
    roles = roles or {"all"}
    role_name = "all" if "all" in roles else "+".join(sorted(roles))
    telemetry = setup_telemetry(cfg.telemetry, role=role_name, clock=clock)
    health = HealthRegistry(clock, telemetry=telemetry)
    previous_health = set_health(health)
    health.expect_bus()
    started = asyncio.Event()
    body = _serve(
        cfg, roles, clock, telemetry, health, stop, started, once=once, config_dir=config_dir, config_path=config_path
    )
    try:
        return await _unless_stopped_while_starting(body, stop, started)
    finally:
        telemetry.shutdown()
        set_telemetry(None)
        set_health(previous_health)


async def _serve(
    cfg: PipelineConfig,
    roles: set[str],
    clock: Clock,
    telemetry: Telemetry,
    health: HealthRegistry,
    stop: asyncio.Event,
    started: asyncio.Event,
    *,
    once: bool,
    config_dir: Path | None,
    config_path: Path | None,
) -> int:
    """Open the bus, build the pipeline (then set ``started``), and run it once or until ``stop``."""
    from pipeline.observability.service import ServiceServer

    service: ServiceServer | None = None
    try:
        async with (
            open_bus(cfg.bus) as bus,
            Pipeline(
                cfg, bus, roles, clock, once=once, config_dir=config_dir, telemetry=telemetry, health=health
            ) as pipe,
        ):
            started.set()
            health.bus_ok()
            if once:
                summary = await pipe.run_once()
                log.info("Run complete", extra={"summary": summary})
                for line in summary["problems"]:
                    print(f"run --once: {line}", file=sys.stderr)
                return 1 if summary["problems"] else 0
            if cfg.service.enabled:
                service = ServiceServer(telemetry, health, cfg.service.host, cfg.service.port, clock=clock)
                await service.start()
                # host and port, not a URL: the log redaction fingerprints URL paths (``/metrics`` became a hash)
                log.info("Service port open", extra={"host": cfg.service.host, "port": service.port,
                                                     "paths": "/metrics /healthz /readyz"})  # fmt: skip
            return await _run_forever(pipe, stop, config_path)
    finally:
        if service is not None:
            await service.stop()


STARTUP_CANCEL_SECS = 10.0
"""How long a start-up cancelled by a stop may take to close what it had opened."""


async def _unless_stopped_while_starting(body: Awaitable[int], stop: asyncio.Event, started: asyncio.Event) -> int:
    """Await ``body``; if ``stop`` is set before ``started``, cancel it and return 0 instead."""
    task: asyncio.Task[int] = asyncio.ensure_future(body)
    stopping = asyncio.ensure_future(stop.wait())
    ready = asyncio.ensure_future(started.wait())
    try:
        await asyncio.wait({task, stopping, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() or started.is_set():
            return await task
        log.info("Stopped while starting; nothing had started yet")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STARTUP_CANCEL_SECS)
        if task in done and not task.cancelled() and task.exception() is not None:
            log.warning("Start-up ended with an error while stopping", extra={"error": str(task.exception())})
        return 0
    finally:
        stopping.cancel()
        ready.cancel()


def reload_webhook_secrets(pipe: Pipeline, config_path: Path) -> int:
    """Re-read the config file and swap each webhook source's live secrets (SIGHUP); return sources updated.

    Only secrets change: a rotation adds the new secret as the second entry, reloads, changes the
    header value in Instantly, then removes the old one and reloads again — no restart, no
    rejected delivery. Anything else that changed in the file needs a restart.

    Only the ``webhook`` section's secrets are read, whatever the roles: a webhook pod mounts only its
    own Secret (docs/operations.md), so reading the Instantly key or a sink token would refuse the reload.
    """
    from pipeline.config.loader import load_config, resolve_under

    if pipe.receiver is None:
        return 0
    fresh = load_config(config_path, resolve=resolve_under(("webhook",)))
    if fresh.webhook is None:
        return 0
    wcfg = fresh.webhook
    n = 0
    for name, src in wcfg.sources.items():
        try:
            pipe.receiver.rotate(name, list(src.secrets))
            n += 1
        except KeyError:
            log.warning("Webhook source added in the file needs a restart", extra={"source": name})
    return n


MONITOR_STOP_SECS = 5
"""After SIGTERM/SIGINT, how long the bus monitor may take to stop."""
TASKS_STOP_SECS = 30
"""Then how long the tasks may take to finish their batches before they are cancelled. A supervisor's
grace period (Kubernetes ``terminationGracePeriodSeconds``, compose ``stop_grace_period``) must be
longer than both together plus closing the bus, or it kills a process still committing."""


def _catch_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (on the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _log_task_stacks() -> None:
    """SIGUSR1: log where every asyncio task of this process is waiting (for a stuck process)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=12)
        where = " <- ".join(
            f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})" for f in reversed(frames)
        )
        log.warning("Task stack", extra={"task": task.get_name(), "stack": where or repr(task)})


async def _run_forever(pipe: Pipeline, stop: asyncio.Event | None, config_path: Path | None = None) -> int:
    """Supervise the pipeline's loops until ``stop`` (or SIGTERM/SIGINT), then stop them cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    _catch_stop_signals(stop)

    def on_hup() -> None:
        if config_path is None:
            return
        if pipe.receiver is None:
            log.info("SIGHUP ignored: it re-reads only the webhook secrets, and this process runs no webhook receiver")
            return
        try:
            n = reload_webhook_secrets(pipe, config_path)
            log.info("Reloaded webhook secrets", extra={"sources": n})
        except (ConfigError, ValueError) as err:
            log.error("Reload refused; keeping the current secrets", extra={"error": str(err)})

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGUSR1, _log_task_stacks)
    tel = pipe.telemetry
    tasks = [asyncio.create_task(supervise(n, b, stop, telemetry=tel), name=n) for n, b in pipe.tasks(stop)]
    monitor = functools.partial(
        monitor_bus,
        pipe.bus,
        pipe.consumer_groups(),
        stop,
        telemetry=pipe.telemetry,
        health=pipe.health,
        refresh=pipe.name_workspaces,
    )
    monitor_task = asyncio.create_task(supervise("bus-monitor", monitor, stop, telemetry=tel), name="bus-monitor")
    retention = functools.partial(apply_retention, pipe.bus, stop, telemetry=tel)
    retention_task = asyncio.create_task(
        supervise("bus-retention", retention, stop, telemetry=tel), name="bus-retention"
    )
    log.info("Pipeline running", extra=_banner(pipe, len(tasks)))
    started = loop.time()
    await stop.wait()
    log.info("Stopping: finishing in-flight batches")
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.gather(monitor_task, retention_task), timeout=MONITOR_STOP_SECS)
    if not tasks:  # e.g. --role webhook: the receiver is closed with the pipeline's stack
        return 0
    done, pending = await asyncio.wait(tasks, timeout=TASKS_STOP_SECS)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.error("Task ended with an error", extra={"task": t.get_name(), "error": str(t.exception())})
    log.info(
        "Pipeline stopped",
        extra={"uptime_secs": round(loop.time() - started, 1), "unfinished_tasks": len(pending)},
    )
    return 0


def _banner(pipe: Pipeline, tasks: int) -> dict[str, Any]:
    """What ``Pipeline running`` says about this process: version, roles, bus and components (no secret;
    the service and webhook ports are logged when they listen)."""
    cfg = pipe.cfg
    fields: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "roles": sorted(pipe.roles),
        "tasks": tasks,
        "bus": cfg.bus.type,
        "sources": sorted({str(getattr(p, "source_id", "")) for p in pipe.pollers} - {""}),
        "sinks": sorted(r.sink_id for r in pipe.runners),
    }
    if pipe.receiver is not None and cfg.webhook is not None:
        fields["webhook_sources"] = sorted(cfg.webhook.sources)
    return fields
