"""Run the workspace half of ``check``: read each configured workspace, then judge the snapshot.

:func:`evaluate_workspace` is pure (a snapshot in, results out); :func:`check_workspaces` reads
every configured workspace with its own key and collects, besides the results, the fingerprints
of the live API keys so committed keys can be matched (:mod:`.cross_reference`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.instantly import api
from connectors.instantly.blast.check import KeyUsage, blast_radius_results
from connectors.instantly.checklist import Basic
from connectors.instantly.client import SessionFactory
from connectors.instantly.config import workspaces
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
from pipeline.errors import ConfigError
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
    """Check every configured workspace (or ``only`` these ids).

    Raises:
        ConfigError: the rules section is invalid or ``only`` names an unknown workspace.
    """
    configured = workspaces(cfg)
    unknown = [w for w in only or () if w not in configured]
    if unknown:
        raise ConfigError(f"--workspace {', '.join(unknown)}: not in the config (known: {', '.join(configured)})")
    ruleset = build_ruleset(cfg.rules, settings, base_dir)
    out = WorkspaceCheck([], {})
    for source_id, wcfg in configured.items():
        if only and source_id not in only:
            continue
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
