"""An agency in the simulator: one admin workspace with N accepted sub-workspaces, changed by a script.

:func:`agency_world` links ``n`` new workspaces ("Sub 01", alias ``sub-01``...) into the admin
workspace's group, each with a little audit history, so one admin key (``x-as-workspace``) sees
them all. Joins and departures over time are a scenario (:mod:`.scenario`) — an *agency script*::

    workspace: acme                 # the admin workspace (default for every step)
    steps:
      - {at: 5, action: create_workspace, name: Sub New, owner_email: o@new.example.org, ref: sub-new}
      - {at: 5, action: audit, workspace: sub-new, activity_type: 1}
      - {at: 5, action: add_group_member, sub_workspace: sub-new}            # joins (accepted)
      - {at: 20, action: remove_group_member, sub_workspace: sub-02}         # leaves the group

``instantly-audit simulate --agency N --scenario script.yaml`` serves it.
"""

from __future__ import annotations

from .models import Actor, Workspace
from .state import SimState

AUDIT_CODES = (1, 4, 22)
"""Audit history of each sub-workspace (login, campaign launched, API key created)."""


def sub_alias(i: int) -> str:
    """The alias of the ``i``-th sub-workspace (1-based): ``sub-01``."""
    return f"sub-{i:02d}"


def agency_world(state: SimState, admin_workspace_id: str, n: int, *, actor: Actor | None = None) -> list[Workspace]:
    """Add ``n`` sub-workspaces with audit history, each an accepted member of the admin's group.

    Raises:
        ApiError: an alias is taken (called twice on one state).
    """
    out = []
    for i in range(1, n + 1):
        ws = state.add_workspace(f"Sub {i:02d}", owner_email=f"owner@sub{i:02d}.example.org", alias=sub_alias(i))
        for code in AUDIT_CODES:
            if actor is None:
                state.insert_audit(ws.id, code)
            else:
                state.insert_audit(ws.id, code, actor=actor)
        state.add_group_member(admin_workspace_id, ws.id, status="accepted", alias=f"link-{sub_alias(i)}")
        out.append(ws)
    return out
