"""Run the workspace half of ``check``: read each configured workspace, then judge the snapshot.

:func:`evaluate_workspace` is pure (a snapshot in, results out); :func:`check_workspaces` reads
every configured workspace with its own key and collects, besides the results, the fingerprints
of the live API keys so committed keys can be matched (:mod:`.cross_reference`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from connectors.instantly import api
from connectors.instantly.blast.check import KeyUsage, blast_radius_results
from connectors.instantly.checklist import Basic
from connectors.instantly.client import InstantlyClient, SessionFactory
from connectors.instantly.config import WorkspaceConfig, workspaces
from connectors.instantly.posture.baseline import stream_results
from connectors.instantly.posture.catalog import WORKSPACE_CHECK
from connectors.instantly.posture.catalog import label as snap_label
from connectors.instantly.posture.keys import check_pipeline_scopes, check_shared_keys
from connectors.instantly.posture.members import check_admins, check_invitations
from connectors.instantly.posture.settings import PostureSettings, build_ruleset
from connectors.instantly.posture.snapshot import MAX_AUDIT_RECORDS, Sleep, WorkspaceSnapshot, fetch_workspace
from pipeline.checks.report import CheckResult, Resource
from pipeline.clock import Clock
from pipeline.config.model import PipelineConfig
from pipeline.errors import ConfigError, SourceError
from pipeline.observability.logs import get_logger
from pipeline.rules.config import RuleSet

log = get_logger("instantly.posture")


def evaluate_workspace(snap: WorkspaceSnapshot, ruleset: RuleSet, settings: PostureSettings) -> list[CheckResult]:
    """Every check's results for one snapshot (pure: no I/O)."""
    label = snap_label(snap)
    if snap.fatal is not None:
        out = [CheckResult(WORKSPACE_CHECK, "Workspace can be read with the pipeline's key", Basic.AUDIT_LOGS, "high",
                           "error", f"cannot check workspace {label}: {snap.fatal}", label)]  # fmt: skip
        return out
    results = stream_results(snap, ruleset)
    results += check_pipeline_scopes(snap)
    results += check_shared_keys(snap)
    results += check_admins(snap, ruleset, settings)
    results += check_invitations(snap, ruleset, settings)
    usage = KeyUsage(snap.audit_refusal is None and "audit_logs" not in snap.errors, settings.shared_key_window_days,
                     snap.audit_records < MAX_AUDIT_RECORDS, snap.key_activity)  # fmt: skip
    results += blast_radius_results(label, snap.snapshots.get("api_keys"), usage, snap.observed_at,
                                    snap.errors.get("api_keys"))  # fmt: skip
    return results


@dataclass
class WorkspaceCheck:
    """Results of every workspace plus the fingerprints of the live keys (to match committed ones)."""

    results: list[CheckResult]
    live_keys: dict[str, tuple[str, Resource]]
    checked: list[str] = field(default_factory=list)
    """The aliases of the workspaces checked."""


async def select_workspaces(
    configured: dict[str, WorkspaceConfig],
    only: Sequence[str] | None,
    *,
    session_factory: SessionFactory | None = None,
    sleep: Sleep = asyncio.sleep,
) -> list[str]:
    """The aliases ``only`` names (each an alias, or an Instantly workspace id), in config order.

    An id is matched against ``as_workspace``, then against the id each remaining workspace's key
    reports (``GET /workspaces/current``, asked only when an id is not found otherwise). Instantly
    workspace ids are UUIDs, so a name of another shape that is no alias is refused at once,
    without asking the API.

    Raises:
        ConfigError: a name is neither a configured alias nor the id of a configured workspace.
    """
    if not only:
        return list(configured)
    wanted = set(only)
    chosen = {a for a in configured if a in wanted}
    ids = {wcfg.as_workspace: a for a, wcfg in configured.items() if wcfg.as_workspace}
    rest = wanted - chosen - {i for i in wanted if i in ids}
    chosen |= {ids[i] for i in wanted if i in ids}
    lookup = {r for r in rest if api.is_id(r)}  # only these can be a workspace id a key reports
    unasked: list[str] = []
    for alias, wcfg in configured.items():
        if not lookup:
            break
        if alias in chosen or wcfg.as_workspace:
            continue
        async with InstantlyClient(wcfg, session_factory=session_factory, sleep=sleep) as client:
            try:
                ws = await client.get(api.WORKSPACE.path)
            except SourceError:
                unasked.append(alias)
                continue
        if ws.get("id") in lookup:
            lookup.discard(ws["id"])
            rest.discard(ws["id"])
            chosen.add(alias)
    if rest:
        known = ", ".join(configured) or "none"
        why = f"; the API could not be asked for the id of: {', '.join(unasked)}" if unasked and lookup else ""
        raise ConfigError(
            f"--workspace {', '.join(sorted(rest))}: neither an alias in the config nor the id of a configured "
            f"workspace (known aliases: {known}){why}"
        )
    return [a for a in configured if a in chosen]


async def check_workspaces(
    cfg: PipelineConfig,
    settings: PostureSettings,
    *,
    clock: Clock,
    only: Sequence[str] | None = None,
    base_dir: Path | None = None,
    session_factory: SessionFactory | None = None,
    sleep: Sleep = asyncio.sleep,
) -> WorkspaceCheck:
    """Check every configured workspace (or ``only`` these, by alias or Instantly id).

    Raises:
        ConfigError: the rules section is invalid or ``only`` names an unknown workspace.
    """
    configured = workspaces(cfg)
    ruleset = build_ruleset(cfg.rules, settings, base_dir)
    selected = await select_workspaces(configured, only, session_factory=session_factory, sleep=sleep)
    out = WorkspaceCheck([], {}, selected)
    for source_id in selected:
        wcfg = configured[source_id]
        snap = await fetch_workspace(source_id, wcfg, settings, clock=clock, session_factory=session_factory,
                                     sleep=sleep)  # fmt: skip
        out.results += evaluate_workspace(snap, ruleset, settings)
        for kid, rec in snap.snapshots.get(api.API_KEYS.name, {}).items():
            fp = rec.get("key")
            if isinstance(fp, str) and fp.startswith("sha256:"):
                out.live_keys[fp] = (source_id, Resource("api_key", kid, rec.get("name")))
        log.info("Workspace checked.", extra={"source": source_id, "workspace": snap.workspace.id,
                                              "results": len(out.results)})  # fmt: skip
    return out
