"""Committed keys that are live: a repository finding whose fingerprint matches a workspace's current key.

The repository scan (:mod:`connectors.instantly.repo_scan`) fingerprints every key it finds;
:func:`~connectors.instantly.posture.run.check_workspaces` collects the fingerprints of the
live keys. A match turns the finding critical: the key must be rotated now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.checks.report import CheckResult, Resource


def cross_reference(results: Sequence[CheckResult], live_keys: Mapping[str, tuple[str, Resource]]) -> list[CheckResult]:
    """Mark committed keys whose fingerprint matches a live key (the key must be rotated now)."""
    out: list[CheckResult] = []
    for r in results:
        hit = live_keys.get(r.fingerprint or "")
        if r.check_id.startswith("repo.") and r.status == "fail" and hit is not None:
            ws, res = hit
            r = CheckResult(r.check_id, r.title, r.checklist, "critical", r.status,
                            f"{r.message} — it is the LIVE key {res.label()} of workspace {ws}: rotate it now",
                            r.target, (*r.resources, res), r.location, r.fingerprint, r.remediation,
                            {**r.attributes, "live_key_id": res.id, "live_key_workspace": ws})  # fmt: skip
        out.append(r)
    return out
