"""Identity join for ``replay --timeline``: one person under all their names.

The same person appears as an email in member events, a user id and a display name in audit
records, and as the creator of API keys. :class:`IdentityIndex` learns these links from events
(union-find over identifiers) and :meth:`IdentityIndex.aliases` returns every identifier linked to
the one asked for, so one query returns everything the person touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

IDENTITY_ATTRIBUTES = ("email", "user_email", "user_id")
"""Attributes that name a person (members: email + user id; keys: the creating user)."""


class IdentityIndex:
    """Links between identifiers seen together in one event (case-insensitive)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def _find(self, x: str) -> str:
        root = x
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while x != root:  # path compression
            self._parent[x], x = root, self._parent[x]
        return root

    def link(self, ids: Iterable[Any]) -> None:
        """Record that these identifiers name one person (non-strings and empty ones are ignored)."""
        keys = [i.lower() for i in ids if isinstance(i, str) and i.strip()]
        for k in keys:
            self._parent.setdefault(k, k)
        for k in keys[1:]:
            a, b = self._find(keys[0]), self._find(k)
            if a != b:
                self._parent[b] = a

    def learn(self, body: dict[str, Any]) -> None:
        """Learn the links one event shows: a member's email ↔ user id ↔ name; an audit actor's
        user id ↔ user name; a key ↔ the user that created it."""
        attrs = body.get("attributes") or {}
        actor = body.get("actor") or {}
        target = body.get("target") or {}
        kind = str(body.get("type") or "")
        if actor.get("user_id") and actor.get("user_name"):
            self.link((actor["user_id"], actor["user_name"]))
        person = [attrs.get(f) for f in IDENTITY_ATTRIBUTES]
        if any(person):
            if kind.startswith("member."):
                person += [target.get("id"), target.get("name")]
            elif kind.startswith("api_key."):
                person += [target.get("id")]
            self.link(person)

    def aliases(self, entity: str) -> frozenset[str]:
        """Every identifier linked to ``entity`` (at least ``entity`` itself), lower-cased."""
        key = entity.lower()
        if key not in self._parent:
            return frozenset({key})
        root = self._find(key)
        return frozenset(k for k in self._parent if self._find(k) == root)
