"""In-memory state of simulated Instantly workspaces and the side effects of changing it.

One :class:`SimState` holds every workspace, user, API key, member, webhook, webhook
delivery, workspace-group link, block-list entry, account and audit record. The HTTP app
and the scenario runner both change it through the methods below, so side effects (audit
records 18-21, 37, 38) are the same whichever way a change arrives. A method given an
``actor`` records the audit entry the real service would; without one (fixture set-up) it
records nothing, except webhook error/resume which Instantly always logs.

Objects can be named with *aliases* (``"acme"``, ``"poller-key"``) that scenarios use.
Ids are UUIDv7 minted from the state's clock; lists are ordered by id (= creation time).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from typing import Any, TypeVar

from . import catalog
from .clock import Clock, system_clock
from .errors import ApiError, bad_request, not_found
from .ids import UUIDv7Factory, fake_key_secret
from .models import (
    SYSTEM_ACTOR,
    Account,
    Actor,
    ApiKey,
    AuditRecord,
    BlockListEntry,
    GroupMember,
    Member,
    User,
    Webhook,
    WebhookEvent,
    Workspace,
)

ACTIVE_GROUP_STATUSES = ("pending", "accepted")

T = TypeVar("T")


class SimState:
    """Everything the simulated API knows; deterministic for a given clock and ``seed``."""

    def __init__(self, clock: Clock = system_clock, seed: int = 0):
        self.clock = clock
        # Seeded PRNGs keep ids and fake secrets reproducible; nothing here protects a real secret.
        self.new_id = UUIDv7Factory(clock, random.Random(f"ids:{seed}"))  # noqa: S311
        self._secrets = random.Random(f"secrets:{seed}")  # noqa: S311
        self.workspaces: dict[str, Workspace] = {}
        self.users: dict[str, User] = {}
        self.api_keys: dict[str, ApiKey] = {}
        self.members: dict[str, Member] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.webhook_events: dict[str, WebhookEvent] = {}
        self.group_members: dict[str, GroupMember] = {}
        self.block_list: dict[str, BlockListEntry] = {}
        self.accounts: dict[str, Account] = {}
        self.aliases: dict[str, str] = {}
        self._audit: dict[str, list[AuditRecord]] = {}

    def now(self) -> float:
        """Current time of the state's clock (epoch seconds)."""
        return self.clock()

    # ---- aliases and look-ups -------------------------------------------------------------

    def name(self, alias: str | None, object_id: str) -> None:
        """Register ``alias`` for ``object_id`` (no-op when ``alias`` is None)."""
        if alias is not None:
            self.aliases[alias] = object_id

    def ref(self, value: str) -> str:
        """Resolve an alias to an id; anything else is returned unchanged."""
        return self.aliases.get(value, value)

    def workspace(self, ref: str) -> Workspace:
        """The workspace with this id or alias.

        Raises:
            ApiError: 404 when there is none.
        """
        return _get(self.workspaces, self.ref(ref))

    def user(self, ref: str) -> User:
        """The user with this id, alias or email, or the user of a membership (id or alias).

        Raises:
            ApiError: 404 when there is none.
        """
        object_id = self.ref(ref)
        if object_id in self.members:
            object_id = self.members[object_id].user_id
        found = self.users.get(object_id) or next((u for u in self.users.values() if u.email == ref), None)
        if found is None:
            raise not_found()
        return found

    def api_key(self, ref: str) -> ApiKey:
        """The API key with this id or alias.

        Raises:
            ApiError: 404 when there is none.
        """
        return _get(self.api_keys, self.ref(ref))

    def key_by_secret(self, secret: str) -> ApiKey | None:
        """The live key whose secret is ``secret`` (None if unknown or deleted)."""
        return next((k for k in self.api_keys.values() if k.key == secret), None)

    def member(self, ref: str, workspace_id: str | None = None) -> Member:
        """The membership with this id, alias or (within ``workspace_id``) email.

        Raises:
            ApiError: 404 when there is none.
        """
        found = self.members.get(self.ref(ref))
        if found is None and workspace_id is not None:
            found = next((m for m in self.members_of(workspace_id) if m.email == ref), None)
        if found is None or (workspace_id is not None and found.workspace_id != workspace_id):
            raise not_found()
        return found

    def webhook(self, ref: str, workspace_id: str | None = None) -> Webhook:
        """The webhook with this id or alias (in ``workspace_id`` when given).

        Raises:
            ApiError: 404 when there is none.
        """
        return _owned(_get(self.webhooks, self.ref(ref)), workspace_id)

    def block_list_entry(self, ref: str, workspace_id: str | None = None) -> BlockListEntry:
        """The block-list entry with this id, alias or (within ``workspace_id``) value.

        Raises:
            ApiError: 404 when there is none.
        """
        found = self.block_list.get(self.ref(ref))
        if found is None and workspace_id is not None:
            found = next((e for e in self.block_list_of(workspace_id) if e.bl_value == ref), None)
        if found is None:
            raise not_found()
        return _owned(found, workspace_id)

    def group_member(self, ref: str) -> GroupMember:
        """The workspace-group link with this id or alias.

        Raises:
            ApiError: 404 when there is none.
        """
        return _get(self.group_members, self.ref(ref))

    # ---- listings (ordered by id, i.e. creation time) -------------------------------------

    def api_keys_of(self, workspace_id: str) -> list[ApiKey]:
        """Live keys of a workspace."""
        return sorted((k for k in self.api_keys.values() if k.workspace_id == workspace_id), key=_by_id)

    def members_of(self, workspace_id: str) -> list[Member]:
        """Members (and pending invitations) of a workspace."""
        return sorted((m for m in self.members.values() if m.workspace_id == workspace_id), key=_by_id)

    def webhooks_of(self, workspace_id: str) -> list[Webhook]:
        """Webhooks of a workspace."""
        return sorted((w for w in self.webhooks.values() if w.workspace_id == workspace_id), key=_by_id)

    def webhook_events_of(self, workspace_id: str) -> list[WebhookEvent]:
        """Webhook delivery records of a workspace."""
        events = self.webhook_events.values()
        return sorted((e for e in events if e.workspace_id == workspace_id), key=_by_id)

    def block_list_of(self, workspace_id: str) -> list[BlockListEntry]:
        """Block-list entries of a workspace."""
        return sorted((e for e in self.block_list.values() if e.workspace_id == workspace_id), key=_by_id)

    def group_members_of(self, workspace_id: str) -> list[GroupMember]:
        """Group links where the workspace is the admin (its sub-workspaces, any status); a sub-workspace
        sees its own admin through :meth:`admin_link_of` only, as the public docs describe."""
        links = self.group_members.values()
        return sorted((g for g in links if g.admin_workspace_id == workspace_id), key=_by_id)

    def accounts_of(self, workspace_id: str) -> list[Account]:
        """Sending accounts of a workspace, ordered by their ``timestamp_created&email`` cursor."""
        accounts = (a for a in self.accounts.values() if a.workspace_id == workspace_id)
        return sorted(accounts, key=lambda a: a.cursor)

    def audit_of(self, workspace_id: str) -> list[AuditRecord]:
        """Audit records of a workspace, ascending by id (the list itself; do not modify)."""
        return self._audit.get(workspace_id, [])

    # ---- users and workspaces -------------------------------------------------------------

    def ensure_user(
        self, email: str, first_name: str = "", last_name: str = "", created_at: float | None = None
    ) -> User:
        """The user with this email, created if new (id minted at ``created_at`` if given)."""
        found = next((u for u in self.users.values() if u.email == email), None)
        if found is None:
            found = User(self.new_id(created_at), email, first_name, last_name)
            self.users[found.id] = found
        return found

    def add_workspace(
        self,
        name: str,
        *,
        owner_email: str,
        owner_name: tuple[str, str] = ("", ""),
        alias: str | None = None,
        owner_alias: str | None = None,
        paid: bool = True,
        created_at: float | None = None,
    ) -> Workspace:
        """Create a workspace with its owner (a user plus an accepted ``owner`` membership)."""
        at = self.now() if created_at is None else created_at
        owner = self.ensure_user(owner_email, *owner_name, created_at=created_at)
        ws = Workspace(self.new_id(created_at), name, owner.id, at, at, has_paid_plan=paid)
        self.workspaces[ws.id] = ws
        self.name(alias, ws.id)
        self.name(owner_alias, owner.id)
        member = Member(
            self.new_id(created_at),
            ws.id,
            owner.id,
            owner_email,
            "owner",
            at,
            accepted=True,
            first_name=owner.first_name,
            last_name=owner.last_name,
        )
        self.members[member.id] = member
        return ws

    def update_workspace(self, workspace_id: str, changes: Mapping[str, Any]) -> Workspace:
        """Apply validated ``name`` / ``org_logo_url`` changes."""
        ws = self.workspace(workspace_id)
        for key, value in changes.items():
            setattr(ws, key, value)
        ws.timestamp_updated = self.now()
        return ws

    def set_paid_plan(self, workspace_id: str, paid: bool) -> None:
        """Give or take away the paid plan (without it every call answers 402)."""
        self.workspace(workspace_id).has_paid_plan = paid

    def change_owner(self, workspace_id: str, email: str) -> Workspace:
        """Make the accepted member ``email`` the owner; the previous owner becomes admin.

        Raises:
            ApiError: 400 when ``email`` is not an accepted member.
        """
        ws = self.workspace(workspace_id)
        new = next((m for m in self.members_of(ws.id) if m.email == email and m.accepted), None)
        if new is None:
            raise bad_request("The new owner must be an accepted member of the workspace")
        for m in self.members_of(ws.id):
            if m.role == "owner":
                m.role = "admin"
        new.role = "owner"
        ws.owner = new.user_id
        ws.timestamp_updated = self.now()
        return ws

    def schedule_removal(self, workspace_id: str, cancel: bool = False) -> Workspace:
        """Schedule the workspace for removal in 24 h (or cancel it)."""
        ws = self.workspace(workspace_id)
        ws.scheduled_for_removal_at = None if cancel else self.now() + 24 * 3600
        ws.timestamp_updated = self.now()
        return ws

    # ---- API keys -------------------------------------------------------------------------

    def create_api_key(
        self,
        workspace_id: str,
        name: str,
        scopes: list[str],
        *,
        actor: Actor | None = None,
        user_id: str | None = None,
        alias: str | None = None,
        created_at: float | None = None,
    ) -> ApiKey:
        """Create a key (audit 37 with the caller's ids when ``actor`` is given)."""
        ws = self.workspace(workspace_id)
        at = self.now() if created_at is None else created_at
        key_id = self.new_id(created_at)
        owner_id = user_id or (actor.user_id if actor else None) or ws.owner
        key = ApiKey(key_id, ws.id, name, list(scopes), fake_key_secret(key_id, self._secrets), at, at, owner_id)
        self.api_keys[key.id] = key
        self.name(alias, key.id)
        if actor is not None:
            self.insert_audit(ws.id, catalog.AUDIT_API_KEY_CREATED, actor=actor)
        return key

    def delete_api_key(self, key_id: str, *, actor: Actor | None = None) -> ApiKey:
        """Delete (revoke) a key; later calls with it get 401. Audit 38 when ``actor`` is given."""
        key = self.api_key(key_id)
        del self.api_keys[key.id]
        if actor is not None:
            self.insert_audit(key.workspace_id, catalog.AUDIT_API_KEY_DELETED, actor=actor)
        return key

    def actor_for_key(self, key: ApiKey, ip: str = "127.0.0.1", user_agent: str | None = None) -> Actor:
        """The audit actor of a call made with ``key``."""
        user = self.users.get(key.user_id or "")
        return Actor(user.id if user else None, user.full_name if user else None, key.id, ip, user_agent, True)

    def actor_for_user(self, ref: str, ip: str = "127.0.0.1", user_agent: str | None = None) -> Actor:
        """The audit actor of something a user did in the web app."""
        user = self.user(ref)
        return Actor(user.id, user.full_name, None, ip, user_agent, False)

    # ---- members --------------------------------------------------------------------------

    def invite_member(
        self,
        workspace_id: str,
        email: str,
        role: str,
        *,
        issuer_id: str | None = None,
        name: tuple[str, str] = ("", ""),
        nickname: str | None = None,
        permissions: list[str] | None = None,
        user_email: str | None = None,
        accepted: bool = False,
        alias: str | None = None,
        created_at: float | None = None,
    ) -> Member:
        """Invite ``email`` (``accepted`` False until :meth:`accept_member`).

        Raises:
            ApiError: 400 for a role the API cannot assign, 409 if the email is already a member.
        """
        ws = self.workspace(workspace_id)
        if role not in catalog.ASSIGNABLE_ROLES:
            raise bad_request(f"Role '{role}' cannot be assigned through the API")
        if any(m.email == email for m in self.members_of(ws.id)):
            raise ApiError(409, "A member with this email already exists in the workspace")
        at = self.now() if created_at is None else created_at
        user = self.ensure_user(email, *name, created_at=created_at)
        member = Member(
            self.new_id(created_at),
            ws.id,
            user.id,
            email,
            role,
            at,
            accepted=accepted,
            first_name=user.first_name,
            last_name=user.last_name,
            user_email=user_email,
            nickname=nickname,
            issuer_id=issuer_id,
            permissions=permissions,
        )
        self.members[member.id] = member
        self.name(alias, member.id)
        return member

    def accept_member(self, member_id: str) -> Member:
        """The invited person accepts the invitation."""
        member = self.member(member_id)
        member.accepted = True
        return member

    def update_member(self, member_id: str, changes: Mapping[str, Any]) -> Member:
        """Apply validated ``role`` / ``nickname`` changes.

        Raises:
            ApiError: 400 when setting ``owner``/``client`` or changing the owner's role.
        """
        member = self.member(member_id)
        if "role" in changes:
            if changes["role"] not in catalog.ASSIGNABLE_ROLES:
                raise bad_request(f"Role '{changes['role']}' cannot be assigned through the API")
            if member.role == "owner":
                raise bad_request("The role of the workspace owner cannot be changed")
        for key, value in changes.items():
            setattr(member, key, value)
        return member

    def delete_member(self, member_id: str) -> Member:
        """Remove a member or withdraw an invitation.

        Raises:
            ApiError: 400 for the owner.
        """
        member = self.member(member_id)
        if member.role == "owner":
            raise bad_request("The workspace owner cannot be removed")
        del self.members[member.id]
        return member

    # ---- webhooks -------------------------------------------------------------------------

    def create_webhook(
        self,
        workspace_id: str,
        target_hook_url: str,
        *,
        fields: Mapping[str, Any] | None = None,
        actor: Actor | None = None,
        alias: str | None = None,
        created_at: float | None = None,
    ) -> Webhook:
        """Create an active webhook; ``fields`` holds other validated body fields. Audit 18."""
        ws = self.workspace(workspace_id)
        at = self.now() if created_at is None else created_at
        hook = Webhook(self.new_id(created_at), ws.id, target_hook_url, at)
        for key, value in (fields or {}).items():
            setattr(hook, key, value)
        self.webhooks[hook.id] = hook
        self.name(alias, hook.id)
        if actor is not None:
            self.insert_audit(ws.id, catalog.AUDIT_WEBHOOK_CREATED, actor=actor, webhook_id=hook.id)
        return hook

    def update_webhook(self, webhook_id: str, changes: Mapping[str, Any], *, actor: Actor | None = None) -> Webhook:
        """Apply validated changes. Audit 19 when ``actor`` is given."""
        hook = self.webhook(webhook_id)
        for key, value in changes.items():
            setattr(hook, key, value)
        if actor is not None:
            self.insert_audit(hook.workspace_id, catalog.AUDIT_WEBHOOK_UPDATED, actor=actor, webhook_id=hook.id)
        return hook

    def delete_webhook(self, webhook_id: str) -> Webhook:
        """Delete a webhook (no audit type exists for this)."""
        hook = self.webhook(webhook_id)
        del self.webhooks[hook.id]
        return hook

    def mark_webhook_error(self, webhook_id: str, *, actor: Actor = SYSTEM_ACTOR) -> Webhook:
        """Disable after delivery failures: ``status -1``, ``timestamp_error``, audit 20."""
        hook = self.webhook(webhook_id)
        hook.status, hook.timestamp_error = -1, self.now()
        self.insert_audit(hook.workspace_id, catalog.AUDIT_WEBHOOK_ERROR, actor=actor, webhook_id=hook.id)
        return hook

    def resume_webhook(self, webhook_id: str, *, actor: Actor = SYSTEM_ACTOR) -> Webhook:
        """Re-enable: ``status 1``, ``timestamp_error`` cleared, audit 21 (if it was disabled)."""
        hook = self.webhook(webhook_id)
        was_error = hook.status == -1
        hook.status, hook.timestamp_error = 1, None
        if was_error:
            self.insert_audit(hook.workspace_id, catalog.AUDIT_WEBHOOK_RESUMED, actor=actor, webhook_id=hook.id)
        return hook

    def add_webhook_event(self, workspace_id: str, webhook_url: str, *, success: bool, **fields: Any) -> WebhookEvent:
        """Record a delivery attempt (``fields``: any other WebhookEvent attribute)."""
        event = WebhookEvent(self.new_id(), self.workspace(workspace_id).id, webhook_url, self.now(), success)
        for key, value in fields.items():
            setattr(event, key, value)
        self.webhook_events[event.id] = event
        return event

    # ---- workspace groups -----------------------------------------------------------------

    def add_group_member(
        self,
        admin_workspace_id: str,
        sub_workspace_id: str,
        *,
        status: str = "pending",
        alias: str | None = None,
    ) -> GroupMember:
        """Invite ``sub`` into ``admin``'s group (``status="accepted"`` skips the acceptance).

        Raises:
            ApiError: 409 if the sub already has an active parent or invitation; 400 if a
                workspace would be both admin and sub.
        """
        admin, sub = self.workspace(admin_workspace_id), self.workspace(sub_workspace_id)
        links = [g for g in self.group_members.values() if g.status in ACTIVE_GROUP_STATUSES]
        if any(g.sub_workspace_id == sub.id for g in links):
            raise ApiError(409, "The sub workspace already has an active parent or invitation")
        if admin.id == sub.id or any(g.sub_workspace_id == admin.id or g.admin_workspace_id == sub.id for g in links):
            raise bad_request("A workspace cannot be both an admin and a sub workspace")
        now = self.now()
        link = GroupMember(self.new_id(), admin.id, sub.id, status, now, now)
        self.group_members[link.id] = link
        self.name(alias, link.id)
        return link

    def set_group_member_status(self, link_id: str, status: str) -> GroupMember:
        """The sub-workspace owner accepts or rejects the invitation."""
        link = self.group_member(link_id)
        link.status, link.timestamp_updated = status, self.now()
        return link

    def delete_group_member(self, link_id: str) -> GroupMember:
        """Remove a sub-workspace from the group (or the sub leaves)."""
        link = self.group_member(link_id)
        del self.group_members[link.id]
        return link

    def admin_link_of(self, workspace_id: str) -> GroupMember | None:
        """The accepted link making ``workspace_id`` a sub-workspace, if any."""
        links = self.group_members.values()
        return next((g for g in links if g.sub_workspace_id == workspace_id and g.status == "accepted"), None)

    def group_member_json(self, link: GroupMember) -> dict[str, Any]:
        """A link rendered with both workspace names."""
        admin, sub = self.workspaces.get(link.admin_workspace_id), self.workspaces.get(link.sub_workspace_id)
        return link.to_json(admin.name if admin else None, sub.name if sub else None)

    # ---- block list and accounts ----------------------------------------------------------

    def add_block_list_entry(
        self, workspace_id: str, value: str, *, alias: str | None = None, created_at: float | None = None
    ) -> BlockListEntry:
        """Block an email address or a domain."""
        at = self.now() if created_at is None else created_at
        entry = BlockListEntry(self.new_id(created_at), self.workspace(workspace_id).id, value, at)
        self.block_list[entry.id] = entry
        self.name(alias, entry.id)
        return entry

    def delete_block_list_entry(self, entry_id: str) -> BlockListEntry:
        """Unblock (delete an entry)."""
        entry = self.block_list_entry(entry_id)
        del self.block_list[entry.id]
        return entry

    def add_account(self, workspace_id: str, email: str, *, created_at: float | None = None, **fields: Any) -> Account:
        """Add a sending mailbox, keyed by its lower-cased email (``fields``: any other Account attribute)."""
        at = self.now() if created_at is None else created_at
        account = self.accounts[email.strip().lower()] = Account(email, self.workspace(workspace_id).id, at, at)
        for key, value in fields.items():
            setattr(account, key, value)
        return account

    def account(self, email: str, workspace_id: str | None = None) -> Account:
        """The sending account with this email, any case (in ``workspace_id`` when given); ApiError 404 if none."""
        return _owned(_get(self.accounts, email.strip().lower()), workspace_id)

    def update_account(self, email: str, fields: dict[str, Any], *, modified_by: str | None = None) -> Account:
        """Change an account as ``PATCH /accounts/{email}`` does (``reply_to``, ``tracking_domain_name``, ...);
        ``timestamp_updated`` and ``modified_by`` move with it. ApiError 400 for a field it has not."""
        account = self.account(email)
        for key, value in fields.items():
            if not hasattr(account, key) or key in ("email", "workspace_id", "timestamp_created"):
                raise bad_request(f"body must NOT have additional properties ({key})")
            setattr(account, key, value)
        account.timestamp_updated = self.now()
        account.modified_by = account.modified_by if modified_by is None else modified_by
        return account

    def remove_account(self, email: str) -> Account:
        """Take a sending account out of its workspace (deleted, or moved away: the list no longer shows it)."""
        return self.accounts.pop(self.account(email).email.lower())

    # ---- audit log ------------------------------------------------------------------------

    def insert_audit(
        self, workspace_id: str, activity_type: int, *, timestamp: float | None = None, **details: Any
    ) -> AuditRecord:
        """Record an activity now. A past ``timestamp`` models a *late-arriving* record.

        The id is minted now, so the record sorts after everything already listed, while
        its ``timestamp`` says when the activity happened. ``details``: ``actor``,
        ``affected_count``, ``campaign_id``, ``webhook_id``, ``subsequence_id``,
        ``list_id``, ``audit_metadata``.
        """
        at = self.now() if timestamp is None else timestamp
        return self._store_audit(AuditRecord(self.new_id(), workspace_id, activity_type, at, **details))

    def insert_audit_backdated(
        self, workspace_id: str, activity_type: int, *, timestamp: float, **details: Any
    ) -> AuditRecord:
        """Record a past activity whose *id* is also minted at ``timestamp`` (sorts among older ids)."""
        return self._store_audit(AuditRecord(self.new_id(timestamp), workspace_id, activity_type, timestamp, **details))

    def _store_audit(self, record: AuditRecord) -> AuditRecord:
        self.workspace(record.workspace_id)
        bisect.insort(self._audit.setdefault(record.workspace_id, []), record, key=_by_id)
        return record


def _by_id(obj: Any) -> str:
    return str(obj.id)


def _get(collection: Mapping[str, T], object_id: str) -> T:
    found = collection.get(object_id)
    if found is None:
        raise not_found()
    return found


def _owned(obj: T, workspace_id: str | None) -> T:
    if workspace_id is not None and getattr(obj, "workspace_id", None) != workspace_id:
        raise not_found()
    return obj
