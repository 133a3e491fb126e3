"""The one-shot checks of API keys: the pipeline's key holds exactly the scopes it needs; no key is shared.

``api_key.pipeline_scopes`` compares the pipeline's key (recognised by
:func:`~connectors.instantly.posture.snapshot.identify_own_key`) with the read scopes of its
streams and of ``check`` itself, from the stream table (:func:`needed_scopes`).
``api_key.shared`` judges a key by the clients (User-Agent products) the audit log shows using
it, else by its name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from connectors.instantly import api
from connectors.instantly.api import covers
from connectors.instantly.posture.catalog import own_result
from connectors.instantly.posture.snapshot import CHECK_STREAMS, WorkspaceSnapshot
from pipeline.checks.report import CheckResult, Resource
from schemas.alert import Severity

KEYS = api.API_KEYS.name
PIPELINE_USER_AGENT = "instantly-audit"
"""The pipeline's own User-Agent product (its key may appear in the audit log used by it)."""


def needed_scopes(streams: Iterable[str]) -> list[str]:
    """The read scopes the pipeline (its streams and ``check``) needs, sorted (unknown names are ignored)."""
    return api.read_scopes(s for s in (*streams, *CHECK_STREAMS) if s in api.BY_NAME)


def check_pipeline_scopes(snap: WorkspaceSnapshot) -> list[CheckResult]:
    """``api_key.pipeline_scopes``: the pipeline's key should hold exactly the read scopes it uses."""
    if KEYS in snap.errors:
        return [own_result("api_key.pipeline_scopes", snap, "error", f"cannot list API keys: {snap.errors[KEYS]}")]
    keys = snap.snapshots.get(KEYS, {})
    if not snap.own_key_ids:
        return [own_result("api_key.pipeline_scopes", snap, "warn",
                     "cannot tell which key is the pipeline's (the API returned no key values); "
                     "set check.pipeline_key_name or --pipeline-key-name")]  # fmt: skip
    needed = needed_scopes(snap.streams)
    out: list[CheckResult] = []
    for kid in snap.own_key_ids:
        rec = keys.get(kid, {})
        name = rec.get("name") if isinstance(rec.get("name"), str) else None
        scopes = sorted({str(s) for s in rec.get("scopes") or []})
        res = (Resource("api_key", kid, name),)
        who = f"'{name}' ({kid})" if name else kid
        drop = [s for s in scopes if s not in needed]
        add = [s for s in needed if s not in scopes]
        attrs = {"needed_scopes": needed, "drop_scopes": drop, "add_scopes": add, "matched_by": snap.own_key_match}
        if drop:
            writes = [s for s in drop if not s.endswith(":read")]
            sev: Severity = "high" if writes else ("medium" if "all:read" in drop else "low")
            msg = f"the pipeline's key {who} holds scopes it does not need: drop {', '.join(drop)}"
            if add:
                msg += f"; add {', '.join(add)} (so far granted only through the dropped wildcards)" if all(
                    covers(scopes, s) for s in add) else f"; it also lacks {', '.join(add)}"  # fmt: skip
            out.append(own_result("api_key.pipeline_scopes", snap, "fail", msg, severity=sev, resources=res,
                            attributes=attrs))  # fmt: skip
        elif add:
            out.append(own_result("api_key.pipeline_scopes", snap, "warn",
                            f"the pipeline's key {who} lacks {', '.join(add)}: those streams cannot be read",
                            severity="medium", resources=res, attributes=attrs))  # fmt: skip
        else:
            out.append(own_result("api_key.pipeline_scopes", snap, "pass",
                            f"the pipeline's key {who} holds exactly the read scopes it needs",
                            resources=res))  # fmt: skip
    return out


_GENERIC_NAME = re.compile(
    r"(?i)(?<![a-z])(shared|common|generic|general|default|master|global|universal|everything|multi[ _-]?purpose"
    r"|all[ _-]?(in[ _-]?one|integrations|tools|apps|purpose))(?![a-z])"
)
INTEGRATION_NAMES = ("zapier", "make", "integromat", "n8n", "hubspot", "salesforce", "pipedrive", "clay", "slack",
                     "airtable", "sheets", "retool", "pabbly", "workato", "tray", "close", "highlevel", "gohighlevel",
                     "apollo", "lemlist", "smartlead", "notion", "zoho", "monday", "attio", "dashboard", "reporting",
                     "analytics", "crm")  # fmt: skip


def name_evidence(name: str | None) -> str | None:
    """Why a key's name suggests several integrations use it, or None."""
    if not name:
        return None
    m = _GENERIC_NAME.search(name)
    if m:
        return f"its name '{name}' sounds shared ({m.group(0).lower()})"
    words = set(re.findall(r"[a-z0-9]+", name.lower()))
    hits = sorted(w for w in INTEGRATION_NAMES if w in words)
    if len(hits) >= 2:
        return f"its name '{name}' names several integrations ({', '.join(hits)})"
    return None


def check_shared_keys(snap: WorkspaceSnapshot) -> list[CheckResult]:
    """``api_key.shared``: one key used by several clients (audit log) or named for several integrations."""
    if KEYS in snap.errors:
        return [own_result("api_key.shared", snap, "error", f"cannot list API keys: {snap.errors[KEYS]}")]
    keys = snap.snapshots.get(KEYS, {})
    usage_visible = snap.audit_refusal is None and api.AUDIT_LOGS.name not in snap.errors
    out: list[CheckResult] = []
    for kid in sorted(keys):
        rec = keys[kid]
        name = rec.get("name") if isinstance(rec.get("name"), str) else None
        res = (Resource("api_key", kid, name),)
        who = f"'{name}' ({kid})" if name else kid
        clients = sorted(snap.usage.get(kid, {}))
        attrs = {"clients": clients}
        if kid in snap.own_key_ids:
            others = [c for c in clients if c != PIPELINE_USER_AGENT]
            if others:
                out.append(own_result("api_key.shared", snap, "fail",
                                f"the pipeline's key {who} is also used by {', '.join(others)} (audit log)",
                                severity="high", resources=res, attributes=attrs))  # fmt: skip
            continue
        if len(clients) >= 2:
            out.append(own_result("api_key.shared", snap, "fail",
                            f"API key {who} is used by {len(clients)} clients: {', '.join(clients)} (audit log)",
                            resources=res, attributes=attrs))  # fmt: skip
            continue
        why = name_evidence(name)
        if why:
            out.append(own_result("api_key.shared", snap, "warn", f"API key {who} may be shared: {why}", resources=res))
    if not out:
        how = "audit-log usage and names" if usage_visible else "names only (the audit log is not readable)"
        out.append(own_result("api_key.shared", snap, "pass", f"no API key appears shared (judged by {how})"))
    return out
