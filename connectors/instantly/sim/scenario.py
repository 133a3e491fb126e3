"""Scripted scenarios: timed steps (YAML) that the simulator plays against its own state.

A scenario file is either a list of steps or a mapping ``{name, workspace, steps}``; the
top-level ``workspace`` is the default for steps that omit it (an ``emulation`` block, read by
:mod:`connectors.instantly.emulation`, is allowed and ignored here). Each step has ``at``
(seconds after the start, by the simulator's clock), ``action`` and the action's
parameters; unknown actions or parameters are rejected at load time. Example::

    - {at: 2.0, action: create_api_key, workspace: acme, as: legacy-key, name: x, scopes: [all:all], ref: k}

Objects are named by alias (``ref:`` registers one), id, or email/value where natural.
``as: <key alias>`` makes the step an API call by that key (``from_api: true``);
``user: <email or alias>`` makes it a web-app action by that user; otherwise the
workspace owner acts in the web app. ``ip`` and ``user_agent`` set the audit fields.
``add_group_member`` links an already *accepted* sub-workspace unless ``status`` says
otherwise, and ``remove_group_member`` takes it out of the group (it leaves); ``audit`` with
``late_by: <secs>`` records a late-arriving entry. Sending accounts are named by email:
``add_account`` records audit 6 and ``remove_account`` audit 7, unless ``moved: true`` (``POST
/accounts/move`` to another workspace leaves no audit record); ``set_account_reply_to`` (``null``
clears it) and ``set_account_tracking_domain`` change the account with no audit record, as Instantly
does, so only the ``accounts`` snapshot sees them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .clock import Clock
from .errors import ApiError
from .models import Actor
from .state import SimState

log = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEMO_INCIDENT = SCENARIO_DIR / "demo_incident.yaml"

_ACTOR = frozenset({"as", "user", "ip", "user_agent"})
# action -> (required parameters, optional parameters); "workspace" is implied for all but create_workspace.
_PARAMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "create_workspace": (frozenset({"name", "owner_email"}), frozenset({"ref", "owner_ref", "paid"})),
    "set_paid_plan": (frozenset({"paid"}), frozenset()),
    "create_api_key": (frozenset({"name", "scopes"}), _ACTOR | {"ref"}),
    "delete_api_key": (frozenset({"key"}), _ACTOR),
    "invite_member": (frozenset({"email", "role"}), _ACTOR | {"ref", "first_name", "last_name", "nickname"}),
    "accept_member": (frozenset({"member"}), frozenset()),
    "update_member_role": (frozenset({"member", "role"}), frozenset()),
    "delete_member": (frozenset({"member"}), frozenset()),
    "create_webhook": (frozenset({"url"}), _ACTOR | {"ref", "name", "event_type", "headers", "campaign"}),
    "update_webhook": (frozenset({"webhook"}), _ACTOR | {"url", "name", "event_type", "headers", "campaign"}),
    "delete_webhook": (frozenset({"webhook"}), frozenset()),
    "mark_webhook_error": (frozenset({"webhook"}), frozenset()),
    "resume_webhook": (frozenset({"webhook"}), _ACTOR),
    "add_block_list_entry": (frozenset({"value"}), frozenset({"ref"})),
    "delete_block_list_entry": (frozenset({"entry"}), frozenset()),
    "add_account": (frozenset({"email"}), _ACTOR | {"provider_code", "reply_to", "tracking_domain_name"}),
    "remove_account": (frozenset({"account"}), _ACTOR | {"moved"}),
    "set_account_reply_to": (frozenset({"account", "reply_to"}), _ACTOR),
    "set_account_tracking_domain": (frozenset({"account", "tracking_domain_name"}), _ACTOR | {"status"}),
    "add_group_member": (frozenset({"sub_workspace"}), frozenset({"status", "ref"})),
    "set_group_member_status": (frozenset({"link", "status"}), frozenset()),
    "remove_group_member": (frozenset({"sub_workspace"}), frozenset()),
    "audit": (
        frozenset({"activity_type"}),
        _ACTOR | {"affected_count", "campaign_id", "list_id", "metadata", "late_by", "from_api"},
    ),
    "login": (frozenset(), _ACTOR),
    "change_owner": (frozenset({"email"}), frozenset()),
    "schedule_removal": (frozenset(), frozenset({"cancel"})),
}
ACTIONS = frozenset(_PARAMS)


class ScenarioError(ValueError):
    """A scenario file is malformed (names the step and the problem)."""


@dataclass(frozen=True)
class Step:
    """One timed action."""

    at: float
    action: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Scenario:
    """A validated, time-ordered list of steps."""

    name: str
    steps: tuple[Step, ...]

    @classmethod
    def from_data(cls, data: Any, name: str = "scenario") -> Scenario:
        """Validate parsed YAML/JSON data.

        Raises:
            ScenarioError: naming the first invalid step and why.
        """
        default_ws = None
        if isinstance(data, dict):
            unknown = set(data) - {"name", "description", "workspace", "steps", "emulation"}
            if unknown:
                raise ScenarioError(f"{name}: unknown top-level keys {sorted(unknown)}")
            name, default_ws, data = str(data.get("name", name)), data.get("workspace"), data.get("steps")
        if not isinstance(data, list):
            raise ScenarioError(f"{name}: expected a list of steps")
        steps = [_parse_step(i, raw, default_ws) for i, raw in enumerate(data)]
        return cls(name, tuple(sorted(steps, key=lambda s: s.at)))

    @classmethod
    def from_yaml(cls, text: str, name: str = "scenario") -> Scenario:
        """Parse and validate YAML text.

        Raises:
            ScenarioError: invalid YAML or steps.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ScenarioError(f"{name}: invalid YAML: {err}") from err
        return cls.from_data(data, name)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read and validate a scenario file.

        Raises:
            ScenarioError: invalid content.
            OSError: the file cannot be read.
        """
        p = Path(path)
        return cls.from_yaml(p.read_text(encoding="utf-8"), p.stem)

    @property
    def duration(self) -> float:
        """Time of the last step."""
        return self.steps[-1].at if self.steps else 0.0


def _parse_step(index: int, raw: Any, default_ws: Any) -> Step:
    where = f"step {index}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping")
    params = dict(raw)
    at, action = params.pop("at", None), params.pop("action", None)
    if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
        raise ScenarioError(f"{where}: 'at' must be a number of seconds >= 0")
    if action not in _PARAMS:
        raise ScenarioError(f"{where}: unknown action {action!r}; known: {', '.join(sorted(_PARAMS))}")
    required, optional = _PARAMS[action]
    if action != "create_workspace":
        if default_ws is not None:
            params.setdefault("workspace", default_ws)
        required = required | {"workspace"}
    missing, unknown = required - set(params), set(params) - required - optional
    if missing:
        raise ScenarioError(f"{where} ({action}): missing {sorted(missing)}")
    if unknown:
        raise ScenarioError(f"{where} ({action}): unknown parameters {sorted(unknown)}")
    return Step(float(at), str(action), params)


@dataclass
class ScenarioRunner:
    """Applies a scenario's steps when the clock reaches ``start + step.at``.

    ``start`` defaults to the clock's time when the runner is created.

    ``applied`` lists steps done; ``errors`` lists steps the state refused (the run goes on).
    """

    scenario: Scenario
    state: SimState
    clock: Clock
    start: float | None = None
    applied: list[Step] = field(default_factory=list)
    errors: list[tuple[Step, str]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether every step has been applied (or refused)."""
        return len(self.applied) + len(self.errors) >= len(self.scenario.steps)

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.clock()

    def apply_due(self) -> list[Step]:
        """Apply every step that is due now; returns them."""
        elapsed = self.clock() - (self.start or 0.0)
        due = []
        for step in self.scenario.steps[len(self.applied) + len(self.errors) :]:
            if step.at > elapsed:
                break
            due.append(step)
            try:
                apply_step(self.state, step)
            except (ApiError, KeyError, ValueError) as err:
                log.warning("Scenario step refused: %s at %.1fs: %s", step.action, step.at, err)
                self.errors.append((step, str(err)))
            else:
                self.applied.append(step)
        return due

    async def run(self, poll_interval: float = 0.01) -> None:
        """Play the scenario to its end (polls the clock every ``poll_interval`` real seconds)."""
        while True:
            self.apply_due()
            if self.done:
                return
            await asyncio.sleep(poll_interval)


def apply_step(state: SimState, step: Step) -> None:
    """Apply one step to ``state``.

    Raises:
        ApiError: the state refused the change (e.g. unknown reference, conflict).
    """
    p = step.params
    if step.action == "create_workspace":
        state.add_workspace(
            p["name"],
            owner_email=p["owner_email"],
            alias=p.get("ref"),
            owner_alias=p.get("owner_ref"),
            paid=p.get("paid", True),
        )
        return
    _HANDLERS[step.action](state, state.workspace(p["workspace"]).id, p)


def _leave_group(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    sub = state.workspace(p["sub_workspace"]).id
    link = next(
        (g for g in state.group_members.values() if g.admin_workspace_id == ws and g.sub_workspace_id == sub), None
    )
    if link is None:
        raise ApiError(404, f"{p['sub_workspace']} is not in the group of {ws}")
    state.delete_group_member(link.id)


def _actor(state: SimState, ws: str, p: Mapping[str, Any]) -> Actor:
    ip, agent = p.get("ip", "127.0.0.1"), p.get("user_agent")
    if "as" in p:
        return state.actor_for_key(state.api_key(p["as"]), ip, agent or "python-requests/2.32.3")
    user = p.get("user") or state.workspace(ws).owner
    return state.actor_for_user(user, ip, agent or "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15")


def _webhook_fields(p: Mapping[str, Any]) -> dict[str, Any]:
    names = {
        "url": "target_hook_url",
        "name": "name",
        "event_type": "event_type",
        "headers": "headers",
        "campaign": "campaign",
    }
    return {attr: p[key] for key, attr in names.items() if key in p}


def _audit(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    actor = _actor(state, ws, p)
    if "from_api" in p:
        actor = replace(actor, from_api=bool(p["from_api"]))
    state.insert_audit(
        ws,
        int(p["activity_type"]),
        actor=actor,
        timestamp=state.now() - float(p.get("late_by", 0)),
        affected_count=p.get("affected_count"),
        campaign_id=p.get("campaign_id"),
        list_id=p.get("list_id"),
        audit_metadata=dict(p.get("metadata") or {}),
    )


def _invite(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    actor = _actor(state, ws, p)
    state.invite_member(
        ws,
        p["email"],
        p["role"],
        issuer_id=actor.user_id,
        alias=p.get("ref"),
        name=(p.get("first_name", ""), p.get("last_name", "")),
        nickname=p.get("nickname"),
    )


def _add_account(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    actor = _actor(state, ws, p)
    fields = {k: p[k] for k in ("provider_code", "reply_to", "tracking_domain_name") if k in p}
    if fields.get("tracking_domain_name"):
        fields["tracking_domain_status"] = "active"
    state.add_account(ws, p["email"], added_by=actor.user_id, **fields)
    state.insert_audit(ws, 6, actor=actor)


def _remove_account(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    state.remove_account(state.account(p["account"], ws).email)
    if not p.get("moved", False):
        state.insert_audit(ws, 7, actor=_actor(state, ws, p))


def _update_account(state: SimState, ws: str, p: Mapping[str, Any], fields: dict[str, Any]) -> None:
    account = state.account(p["account"], ws)
    state.update_account(account.email, fields, modified_by=_actor(state, ws, p).user_id)


def _set_tracking_domain(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    name = p["tracking_domain_name"]
    status = p.get("status", "active" if name else None)
    _update_account(state, ws, p, {"tracking_domain_name": name, "tracking_domain_status": status})


def _create_webhook(state: SimState, ws: str, p: Mapping[str, Any]) -> None:
    fields = _webhook_fields(p)
    url = fields.pop("target_hook_url")
    state.create_webhook(ws, url, fields=fields, actor=_actor(state, ws, p), alias=p.get("ref"))


_Handler = Callable[[SimState, str, Mapping[str, Any]], object]
_HANDLERS: dict[str, _Handler] = {
    "set_paid_plan": lambda s, ws, p: s.set_paid_plan(ws, bool(p["paid"])),
    "create_api_key": lambda s, ws, p: s.create_api_key(
        ws, p["name"], list(p["scopes"]), actor=_actor(s, ws, p), alias=p.get("ref")
    ),
    "delete_api_key": lambda s, ws, p: s.delete_api_key(s.api_key(p["key"]).id, actor=_actor(s, ws, p)),
    "invite_member": _invite,
    "accept_member": lambda s, ws, p: s.accept_member(s.member(p["member"], ws).id),
    "update_member_role": lambda s, ws, p: s.update_member(s.member(p["member"], ws).id, {"role": p["role"]}),
    "delete_member": lambda s, ws, p: s.delete_member(s.member(p["member"], ws).id),
    "create_webhook": _create_webhook,
    "update_webhook": lambda s, ws, p: s.update_webhook(
        s.webhook(p["webhook"], ws).id, _webhook_fields(p), actor=_actor(s, ws, p)
    ),
    "delete_webhook": lambda s, ws, p: s.delete_webhook(s.webhook(p["webhook"], ws).id),
    "mark_webhook_error": lambda s, ws, p: s.mark_webhook_error(s.webhook(p["webhook"], ws).id),
    "resume_webhook": lambda s, ws, p: s.resume_webhook(s.webhook(p["webhook"], ws).id, actor=_actor(s, ws, p)),
    "add_block_list_entry": lambda s, ws, p: s.add_block_list_entry(ws, p["value"], alias=p.get("ref")),
    "delete_block_list_entry": lambda s, ws, p: s.delete_block_list_entry(s.block_list_entry(p["entry"], ws).id),
    "add_account": _add_account,
    "remove_account": _remove_account,
    "set_account_reply_to": lambda s, ws, p: _update_account(s, ws, p, {"reply_to": p["reply_to"]}),
    "set_account_tracking_domain": _set_tracking_domain,
    "add_group_member": lambda s, ws, p: s.add_group_member(
        ws, s.workspace(p["sub_workspace"]).id, status=p.get("status", "accepted"), alias=p.get("ref")
    ),
    "set_group_member_status": lambda s, ws, p: s.set_group_member_status(p["link"], p["status"]),
    "remove_group_member": lambda s, ws, p: _leave_group(s, ws, p),
    "audit": _audit,
    "login": lambda s, ws, p: s.insert_audit(ws, 1, actor=_actor(s, ws, p)),
    "change_owner": lambda s, ws, p: s.change_owner(ws, p["email"]),
    "schedule_removal": lambda s, ws, p: s.schedule_removal(ws, cancel=bool(p.get("cancel", False))),
}
