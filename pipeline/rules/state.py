"""Rule state on the bus: key layout, encoding and change detection (pure; no I/O).

Keys (in ``instantly.state.v1``; workspace ids and entity names are percent-encoded)::

    rules/<rule_id>/<workspace>                {"v":1, "rv":<rule version>, "wn":<workspace name>, "d":{...}}
    rules/<rule_id>/<workspace>/alerts         {"v":1, "a":{<condition key>: [track...]}}
    rules/<rule_id>/<workspace>/s/<entity>     {"t":<last used>, "d":{...}}

Keys starting with ``rules/_`` belong to the worker (its commit marker), not to a rule.
A rule whose version changed starts with empty ``data``/``subs`` (its open alert conditions are
kept so they can still resolve, and are not raised again); :attr:`StateStore.resets` lists each
such rule and workspace so the worker can say so. A blob that cannot be decoded is skipped and
reported.

:class:`StateStore` holds every :class:`RuleState` in memory, remembers a hash of what it
last wrote per key (for entity documents, in their state's ``sub_written`` with the key, so a
rewrite looks up one small table), and :meth:`StateStore.flush` returns only the keys whose
bytes changed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote, unquote

import orjson

from pipeline.rules.base import AlertTrack, RuleState
from schemas.event import WorkspaceRef

PREFIX = "rules/"
FORMAT = 1
SUB_TIME_STEP = 3600.0
"""Stored last-use times of entity documents are rounded down to the hour, so an entity used
again within the hour is not rewritten (the order in memory stays exact)."""


def _coarse(t: float) -> float:
    return t - t % SUB_TIME_STEP


@functools.lru_cache(maxsize=65_536)
def _q(s: str) -> str:
    return quote(s, safe="")


@functools.lru_cache(maxsize=16_384)
def main_key(rule_id: str, workspace_id: str) -> str:
    """The key of a rule's main document for a workspace."""
    return f"{PREFIX}{rule_id}/{_q(workspace_id)}"


def tracks_key(rule_id: str, workspace_id: str) -> str:
    """The key of a rule's alert bookkeeping for a workspace."""
    return f"{main_key(rule_id, workspace_id)}/alerts"


def sub_key(rule_id: str, workspace_id: str, name: str) -> str:
    """The key of one per-entity document."""
    return f"{main_key(rule_id, workspace_id)}/s/{_q(name)}"


_TRACKS_HEAD = b'{"v":%d,"a":{' % FORMAT


def tracks_blob(tracks: Mapping[str, AlertTrack]) -> bytes:
    """The stored tracks document, ``orjson.dumps({"v": FORMAT, "a": {key: track.to_list()}})`` byte for byte.

    Each track's ``"<key>":[...]`` member is encoded once and kept in :attr:`AlertTrack.enc` until
    the engine changes the track, so a rule holding many open conditions (one per user for
    ``auth.mfa_disabled``) re-encodes only the ones a batch touched.
    """
    cached = [tr.enc for tr in tracks.values()]
    if None not in cached:
        return _TRACKS_HEAD + b",".join(cast(list[bytes], cached)) + b"}}"
    parts = [tr.enc or _track_member(k, tr) for k, tr in tracks.items()]
    return _TRACKS_HEAD + b",".join(parts) + b"}}"


def _track_member(key: str, tr: AlertTrack) -> bytes:
    """Encode (and cache) one track's ``"<key>":[...]`` member."""
    e = tr.enc = orjson.dumps(key) + b":" + orjson.dumps(tr.to_list())
    return e


@dataclass(frozen=True, slots=True)
class StateProblem:
    """A state entry that could not be loaded (it is left on the bus untouched)."""

    key: str
    error: str


@dataclass(frozen=True, slots=True)
class StateReset:
    """A rule whose stored state was written by another version of the rule (an upgrade changed
    it): its data and entity documents start over, its open alert conditions are kept."""

    rule_id: str
    workspace_id: str
    stored_version: Any
    version: int
    entities: int
    """Entity documents dropped with it."""


@dataclass(slots=True)
class StateStore:
    """All rule states in memory, plus what was last persisted (see the module docstring)."""

    versions: Mapping[str, int]
    states: dict[tuple[str, str], RuleState] = field(default_factory=dict)
    hashes: dict[str, int] = field(default_factory=dict)
    touched: set[RuleState] = field(default_factory=set)
    resets: list[StateReset] = field(default_factory=list)
    """What the last :meth:`load` started over because the rule's version changed."""

    def get(self, rule_id: str, workspace: WorkspaceRef) -> RuleState:
        """The state of ``rule_id`` for ``workspace`` (created empty on first use)."""
        k = (rule_id, workspace.id)
        st = self.states.get(k)
        if st is None:
            st = self.states[k] = RuleState(rule_id, workspace)
            st.data_touched = True  # persist the workspace name with the first write
        elif workspace.name is not None and workspace.name != st.workspace.name:
            st.workspace = workspace
            st.data_touched = True
        self.touched.add(st)
        return st

    def for_rule(self, rule_id: str) -> list[RuleState]:
        """Every workspace state of one rule."""
        return [st for (rid, _), st in self.states.items() if rid == rule_id]

    # ---- loading --------------------------------------------------------------------------
    def load(self, items: Mapping[str, bytes]) -> list[StateProblem]:
        """Replace the in-memory state with ``items`` (from ``bus.state_items("rules/")``).

        Entries of rules not in ``versions`` (disabled or removed) are ignored and left alone.
        """
        self.states.clear()
        self.hashes.clear()
        self.touched.clear()
        self.resets = []
        problems: list[StateProblem] = []
        stale: dict[RuleState, Any] = {}  # state -> the rule version that wrote it
        subs: list[tuple[str, RuleState, str, dict[str, Any], float]] = []
        tracks: list[tuple[str, RuleState, bytes]] = []
        # Main documents first: they carry the workspace name and the rule version.
        for key in sorted(items, key=lambda k: k.count("/")):
            if not key.startswith(PREFIX) or key.startswith(PREFIX + "_"):
                continue
            parts = key[len(PREFIX) :].split("/")
            rule_id = parts[0]
            if rule_id not in self.versions:
                continue
            value = items[key]
            try:
                ws_id = unquote(parts[1])
                if len(parts) == 2:
                    if not self._load_main(rule_id, ws_id, value):
                        stale[self.states[(rule_id, ws_id)]] = orjson.loads(value).get("rv")
                else:
                    st = self.states.get((rule_id, ws_id)) or self._new(rule_id, ws_id, None)
                    if len(parts) == 3 and parts[2] == "alerts":
                        tracks.append((key, st, value))
                    elif len(parts) == 4 and parts[2] == "s":
                        doc = orjson.loads(value)
                        if not isinstance(doc.get("d"), dict):
                            raise ValueError("entity document is not an object")
                        name = unquote(parts[3])
                        subs.append((key, st, name, doc["d"], float(doc["t"])))
                        if sub_key(rule_id, ws_id, name) == key:  # entity hashes live with their state
                            st.sub_written[name] = (key, hash(value))
                            continue
                    else:
                        raise ValueError("unknown key layout")
            except (ValueError, KeyError, TypeError, IndexError) as err:
                problems.append(StateProblem(key, f"{type(err).__name__}: {err}"))
                continue
            self.hashes[key] = hash(value)
        for key, st, value in tracks:
            try:
                doc = orjson.loads(value)
                st.tracks = {k: AlertTrack.from_list(v) for k, v in doc["a"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                problems.append(StateProblem(key, f"{type(err).__name__}: {err}"))
                self.hashes.pop(key, None)
        for _key, st, name, doc, t in sorted(subs, key=lambda s: s[4]):  # oldest first = LRU order
            if st in stale:
                st.subs_removed.add(name)  # deleted on the next flush
                continue
            st.subs[name] = doc
            st.sub_time[name] = t
        for st, written in stale.items():
            st.data_touched = True
            self.touched.add(st)
            self.resets.append(
                StateReset(st.rule_id, st.workspace.id, written, self.versions[st.rule_id], len(st.subs_removed))
            )
        self.resets.sort(key=lambda r: (r.rule_id, r.workspace_id))
        return problems

    def _new(self, rule_id: str, ws_id: str, ws_name: str | None) -> RuleState:
        st = self.states[(rule_id, ws_id)] = RuleState(rule_id, WorkspaceRef(ws_id, ws_name))
        return st

    def _load_main(self, rule_id: str, ws_id: str, value: bytes) -> bool:
        """Load a main document; False when it was written by another version of the rule."""
        doc = orjson.loads(value)
        if not isinstance(doc, dict) or not isinstance(doc.get("d"), dict):
            raise ValueError("main document must be an object with 'd'")
        st = self._new(rule_id, ws_id, doc.get("wn"))
        if doc.get("rv") != self.versions[rule_id]:
            return False  # the rule's format changed: start its data and entities over
        st.data = doc["d"]
        return True

    # ---- flushing -------------------------------------------------------------------------
    def flush(self) -> tuple[dict[str, bytes | None], list[tuple[str, str]]]:
        """Encode what was touched since the last flush; return (changed keys, encoding failures).

        A failure (a rule stored something that is not JSON) keeps the previous value on the bus.
        """
        changes: dict[str, bytes | None] = {}
        failures: list[tuple[str, str]] = []
        hashes = self.hashes
        dumps = orjson.dumps
        for st in self.touched:
            if not (st.data_touched or st.tracks_dirty or st.subs_touched or st.subs_removed):  # st.dirty, inlined
                continue
            rid, ws = st.rule_id, st.workspace.id
            if st.data_touched:
                doc = {"v": FORMAT, "rv": self.versions.get(rid, 1), "wn": st.workspace.name, "d": st.data}
                self._put(changes, failures, rid, main_key(rid, ws), doc)
            if st.tracks_dirty:
                key = tracks_key(rid, ws)
                if st.tracks:
                    blob = tracks_blob(st.tracks)
                    h = hash(blob)
                    if hashes.get(key) != h:
                        hashes[key] = h
                        changes[key] = blob
                elif key in hashes:
                    changes[key] = None
                    del hashes[key]
            if st.subs_touched:  # (the loop body is _put for entity documents, unrolled: it is the hot one)
                subs, sub_time, written = st.subs, st.sub_time, st.sub_written
                for name in st.subs_touched:
                    sdoc = subs.get(name)
                    if sdoc is None:
                        continue
                    t = sub_time[name]
                    w = written.get(name)
                    try:
                        blob = dumps({"t": t - t % SUB_TIME_STEP, "d": sdoc})  # _coarse(t)
                    except TypeError as err:
                        key = sub_key(rid, ws, name) if w is None else w[0]
                        failures.append((rid, f"state of {key} is not JSON: {err}"))
                        continue
                    h = hash(blob)
                    if w is None:
                        key = sub_key(rid, ws, name)
                        written[name] = (key, h)
                        changes[key] = blob
                    elif w[1] != h:
                        written[name] = (w[0], h)
                        changes[w[0]] = blob
                st.subs_touched.clear()
            if st.subs_removed:
                for name in st.subs_removed:
                    w = st.sub_written.pop(name, None)
                    if w is not None:
                        changes[w[0]] = None
                st.subs_removed.clear()
            st.data_touched = st.tracks_dirty = False
        self.touched.clear()
        return changes, failures

    def _put(
        self,
        changes: dict[str, bytes | None],
        failures: list[tuple[str, str]],
        rule_id: str,
        key: str,
        doc: dict[str, Any],
    ) -> None:
        try:
            blob = orjson.dumps(doc)
        except TypeError as err:
            failures.append((rule_id, f"state of {key} is not JSON: {err}"))
            return
        h = hash(blob)
        if self.hashes.get(key) != h:
            self.hashes[key] = h
            changes[key] = blob

    def encode_all(self) -> dict[str, bytes]:
        """Every key and value the current state would occupy on the bus (for sizing and tests)."""
        out: dict[str, bytes] = {}
        for (rid, ws), st in self.states.items():
            out[main_key(rid, ws)] = orjson.dumps(
                {"v": FORMAT, "rv": self.versions.get(rid, 1), "wn": st.workspace.name, "d": st.data}
            )
            if st.tracks:
                out[tracks_key(rid, ws)] = tracks_blob(st.tracks)
            for name, sdoc in st.subs.items():
                out[sub_key(rid, ws, name)] = orjson.dumps({"t": _coarse(st.sub_time[name]), "d": sdoc})
        return out


def state_size(items: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """(number of keys, total bytes of keys and values)."""
    n = size = 0
    for k, v in items:
        n += 1
        size += len(k.encode()) + len(v)
    return n, size
