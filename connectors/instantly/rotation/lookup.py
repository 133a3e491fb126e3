"""What a rotation reads from Instantly: the key it replaces, the plan, and whether a key authenticates.

The key is found by name with the admin key; the plan (:func:`plan_document`) is the journal's
first record, and :func:`plan_lines` describes it for ``--dry-run``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from connectors.instantly.api import API_KEYS, WORKSPACE, page_limit
from connectors.instantly.client import InstantlyClient
from connectors.instantly.rotation.errors import RotationError
from connectors.instantly.rotation.scopes import check_scopes
from pipeline.errors import AuthError, SourceError, UpstreamError
from schemas.ids import fingerprint_secret

KEYS_PATH = API_KEYS.path
"""The API-key endpoint: listed to find keys, ``POST`` to create one, ``DELETE {KEYS_PATH}/{id}`` to delete one."""


async def keys_named(client: InstantlyClient, name: str) -> list[dict[str, Any]]:
    """Every API key of the workspace called ``name``.

    Raises:
        SourceError: the listing failed.
    """
    return [k for k in await client.get_all(KEYS_PATH, limit=page_limit(API_KEYS)) if k.get("name") == name]


async def plan_document(
    client: InstantlyClient,
    *,
    name: str,
    source_id: str,
    admin_secret: str,
    scopes: Sequence[str] | None,
    destination: str,
) -> dict[str, Any]:
    """The journal's first fields: the workspace, the one key called ``name``, its scopes and the new ones.

    Raises:
        RotationError: no key or several keys are called ``name``, or it is the admin key itself.
        ConfigError: ``scopes`` is malformed or widens the key.
        SourceError: Instantly refused a read.
    """
    ws = await client.get(WORKSPACE.path)
    keys = await keys_named(client, name)
    if not keys:
        raise RotationError(f"no API key named '{name}' in workspace {source_id}")
    if len(keys) > 1:
        ids = ", ".join(str(k.get("id")) for k in keys)
        raise RotationError(f"{len(keys)} API keys are named '{name}' ({ids}); rename or delete the "
                            "extra ones first (rotation finds the key by name)")  # fmt: skip
    old = keys[0]
    old_value = old.get("key")
    if isinstance(old_value, str) and old_value == admin_secret:
        raise RotationError(f"'{name}' is the admin key itself; rotate the admin key by hand")
    old_scopes = sorted({str(s) for s in old.get("scopes") or []})
    new_scopes = check_scopes(scopes, old_scopes) if scopes is not None else old_scopes
    masked = not isinstance(old_value, str) or "*" in old_value
    return {
        "workspace": source_id,
        "workspace_id": ws.get("id"),
        "key_name": name,
        "old_key_id": str(old["id"]),
        "old_key_fingerprint": None if masked else fingerprint_secret(str(old_value)),
        "old_scopes": old_scopes,
        "scopes": new_scopes,
        "destination": destination,
    }


def plan_lines(doc: dict[str, Any], *, destination: str, grace_secs: float, confirm: bool, journal: Path) -> list[str]:
    """The steps a rotation planned as ``doc`` will take, for ``--dry-run``."""
    scopes, old = doc["scopes"], doc["old_scopes"]
    return [
        f"Rotation plan for API key '{doc['key_name']}' in workspace {doc['workspace']} ({doc['workspace_id']}):",
        f"  1. create a new key '{doc['key_name']}' with scopes: {', '.join(scopes)}"
        + ("" if scopes == old else f" (old: {', '.join(old)})"),
        f"  2. verify it with a read call (GET {WORKSPACE.path})",
        f"  3. store it in {destination}",
        "  4. wait for --confirm" + (f" or the grace period ({grace_secs:g} s)" if not confirm else ""),
        f"  5. delete the old key {doc['old_key_id']}",
        f"Journal: {journal}",
    ]


async def authenticates(
    probe: Callable[[], InstantlyClient], *, attempts: int, delay_secs: float, sleep: Callable[[float], Awaitable[None]]
) -> bool:
    """A read call through ``probe()``: True unless Instantly keeps answering 401 (402/403/404 prove the key).

    Raises:
        UpstreamError: Instantly failed in a way retries did not fix.
    """
    for attempt in range(attempts):
        try:
            async with probe() as client:
                await client.get(WORKSPACE.path)
            return True
        except AuthError:
            if attempt + 1 < attempts:
                await sleep(delay_secs)
        except UpstreamError:
            raise
        except SourceError:
            return True
    return False
