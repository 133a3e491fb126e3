"""The real poller against an Instantly fake written from the public API v2 reference alone.

:class:`tests.fakes.instantly_public.PublicInstantly` knows nothing of ``sim/`` or of the other
test fake: it serves what developer.instantly.ai states (bearer auth, the list envelope, ``limit``
1-100 or 1-1000, ``starting_after`` = the last item's id, the error body) and varies what the docs
leave open. Each test names the documented freedom it exercises.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from connectors.instantly.budget import RequestBudget
from connectors.instantly.config import BudgetConfig, WorkspaceConfig
from connectors.instantly.source import InstantlyWorkspacePoller
from pipeline.bus.base import DEADLETTER_TOPIC, EVENTS_TOPIC
from pipeline.bus.sqlite import SqliteBus
from pipeline.clock import FakeClock, format_time
from pipeline.redaction.registry import register_secret
from tests.fakes import FakeSleep
from tests.fakes.instantly_public import Answer, PublicInstantly
from tests.unit.test_instantly_source import records

KEY = "public-docs-key-3c9e71"
WS = "019c0000-0000-7000-8000-0000000000aa"


async def no_sleep(_: float) -> None:
    return None


def workspace() -> dict[str, Any]:
    """``GET /workspaces/current`` with only the required fields (id, timestamps, owner, name)."""
    return {"id": WS, "name": "Acme", "owner": "019c0000-0000-7000-8000-0000000000bb",
            "timestamp_created": "2025-01-01T00:00:00Z", "timestamp_updated": "2025-01-01T00:00:00Z"}  # fmt: skip


def audit_record(rid: str, ts: float, code: Any = 1, **extra: Any) -> dict[str, Any]:
    """An audit record with only the required fields (optional ones absent)."""
    return {"id": rid, "timestamp": format_time(ts), "organization_id": WS, "activity_type": code,
            "ip_address": "203.0.113.9", "from_api": False, **extra}  # fmt: skip


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[PublicInstantly, SqliteBus]]:
    fake = PublicInstantly(KEY)
    fake.workspace = workspace()
    async with fake, SqliteBus(tmp_path / "bus.db") as bus:
        yield fake, bus


def poller(fake: PublicInstantly, bus: SqliteBus, clock: FakeClock, **kw: Any) -> InstantlyWorkspacePoller:
    cfg = WorkspaceConfig(
        api_key=SecretStr(KEY), base_url=fake.url, max_retries=kw.pop("max_retries", 1),
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000), **kw,
    )  # fmt: skip
    return InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, sleep=no_sleep, rng=random.Random(1))


async def bus_docs(bus: SqliteBus, topic: str = EVENTS_TOPIC) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await records(bus, (topic,))]


# ------------------------------------------------------------------------------ pagination
@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("last_cursor", ["absent", "null", "empty", "id"])
async def test_listings_end_every_documented_way_and_survive_changes_between_pages(
    env: tuple[PublicInstantly, SqliteBus], order: Any, last_cursor: Any
) -> None:
    """``next_starting_after`` is optional (absent, ``null``, ``""``, or still the last id on the last
    page, then an empty page); the order is undocumented; items come and go between page requests
    (the item the cursor names is deleted, a new one inserted). Every audit record is published
    exactly once; a key deleted mid-listing is one ``api_key.deleted``, never a false one."""
    fake, bus = env
    fake.last_cursor = last_cursor
    fake.order = {"audit-logs": order, "api-keys": order}
    clock = FakeClock()
    now = clock.now()

    def rid(i: int) -> str:
        return f"019c0000-0000-7000-8000-{i:012d}"

    t = "2026-01-01T00:00:00Z"
    fake.audit = [audit_record(rid(i), now - 3000 + i) for i in range(1500)]
    fake.lists = {"api-keys": [{"id": rid(20_000 + i), "name": f"k{i}", "scopes": ["leads:read"], "key": f"k{i}****",
                                "organization_id": WS, "timestamp_created": t, "timestamp_updated": t}
                               for i in range(150)]}  # fmt: skip
    deleted: list[str] = []
    inserted = audit_record(rid(9_000), now - 1, 37)

    def churn(tail: str, query: dict[str, str]) -> None:
        if tail == "audit-logs" and inserted not in fake.audit:
            fake.audit.append(inserted)
        if tail == "api-keys" and not deleted:
            deleted.append(query["starting_after"])
            fake.lists["api-keys"] = [k for k in fake.lists["api-keys"] if k["id"] != deleted[0]]

    fake.between_pages = churn
    async with poller(fake, bus, clock, streams=["audit_logs", "api_keys"]) as p:
        await p.poll_once()
        fake.between_pages = None
        for _ in range(2):
            clock.advance(60)
            await p.poll_once()
            assert p.last_failures == {}
    evs = await bus_docs(bus)
    audit_ids = [e["source"]["record_id"] for e in evs if e["type"].startswith("audit.")]
    assert Counter(audit_ids) == Counter(r["id"] for r in fake.audit)
    assert [e["source"]["record_id"] for e in evs if e["type"] == "api_key.deleted"] == deleted
    assert sum(e["type"] == "api_key.baseline" for e in evs) in (149, 150)


async def test_an_item_updated_while_its_listing_is_paged_is_not_read_as_deleted(
    env: tuple[PublicInstantly, SqliteBus],
) -> None:
    """The order of a listing is undocumented. Sorted by ``timestamp_updated`` (newest first), a key
    updated while the pages are read moves ahead of the cursor and is missing from that listing:
    the poller published a false ``api_key.deleted`` and, next poll, ``api_key.created`` (a removed
    and re-invited member alerts the same way). A multi-page listing that would delete something is
    listed once more, and only what is missing from both is deleted."""
    fake, bus = env
    t = "2026-01-01T00:00:00Z"
    keys = [{"id": f"019c0000-0000-7000-8000-{i:012d}", "name": f"k{i}", "scopes": ["leads:read"], "key": "k****",
             "organization_id": WS, "timestamp_created": t, "timestamp_updated": format_time(1_767_225_600 + i)}
            for i in range(150)]  # fmt: skip
    fake.lists = {"api-keys": keys}
    fake.order_by = {"api-keys": "timestamp_updated"}
    clock = FakeClock()

    def touch(tail: str, query: dict[str, str]) -> None:  # key 10 (on page 2) is updated meanwhile
        keys[10]["timestamp_updated"] = "2026-02-01T00:00:00Z"

    async with poller(fake, bus, clock, streams=["api_keys"]) as p:
        assert (await p.poll_once())["api_keys"] == 150
        fake.between_pages = touch
        clock.advance(60)
        assert (await p.poll_once())["api_keys"] == 0
        fake.between_pages = None
        fake.lists["api-keys"] = keys[:-1]  # a real deletion is still one event
        clock.advance(60)
        assert (await p.poll_once())["api_keys"] == 1
        clock.advance(60)
        assert (await p.poll_once())["api_keys"] == 0
    types = Counter(e["type"] for e in await bus_docs(bus))
    assert types == {"api_key.baseline": 150, "api_key.deleted": 1}


# ------------------------------------------------------------------------------ audit log ids
async def test_uuid4_audit_ids_are_not_read_as_time_ordered(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """Ids are ``format: uuid`` and the cursor is "the ID of the last item"; nothing says a new record
    gets a greater id. A listing sorted by random (version 4) UUIDs put about half of the new records
    before ``last_id``: the incremental read never listed them and they waited for the hourly
    re-read (p50 28 min, max 59 min measured). Each record must be published by the poll after it
    appears, exactly once."""
    fake, bus = env
    rng = random.Random(7)

    def uuid4() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    clock = FakeClock()
    fake.audit = [audit_record(uuid4(), clock.now() - 600 + i) for i in range(20)]
    async with poller(fake, bus, clock, streams=["audit_logs"]) as p:
        assert (await p.poll_once())["audit_logs"] == 20
        for _ in range(12):
            clock.advance(60)
            fake.audit.append(audit_record(uuid4(), clock.now() - 1, 37))
            assert (await p.poll_once())["audit_logs"] == 1
    ids = [e["source"]["record_id"] for e in await bus_docs(bus)]
    assert Counter(ids) == Counter(r["id"] for r in fake.audit)


async def test_a_newest_first_audit_log_is_read_down_to_the_window_only(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """The audit log's order is undocumented; newest first is the usual one. Such a listing never
    confirms an ascending order, so every poll re-reads the ``start_date`` window — and read it to
    the end: 3,000 records of the last 17 hours cost 3 pages per 5-second poll (a busy workspace's
    day, 21 pages per poll for 20,000 records, most of the default 300 requests/min budget). Once a
    page of a listing that has been newest first reaches records older than the window, every
    later page is older still (its records would all be too old to publish): the read stops there.
    Nothing is missed and nothing published twice."""
    fake, bus = env
    fake.order["audit-logs"] = "desc"
    clock = FakeClock()
    now = clock.now()

    def rid(i: int) -> str:  # UUIDv7-like: ascending with time
        return f"019c0000-0000-7000-8000-{i:012d}"

    fake.audit = [audit_record(rid(i), now - 60_000 + 20 * i) for i in range(3000)]
    async with poller(fake, bus, clock, streams=["audit_logs"]) as p:
        assert (await p.poll_once())["audit_logs"] == 3000
        for k in range(5):
            clock.advance(60)
            fake.audit.append(audit_record(rid(5000 + k), clock.now() - 1, 37))
            before = len(fake.requests_to("audit-logs"))
            assert (await p.poll_once())["audit_logs"] == 1
            assert len(fake.requests_to("audit-logs")) - before == 1, "one page holds the whole window"
    ids = [e["source"]["record_id"] for e in await bus_docs(bus)]
    assert Counter(ids) == Counter(r["id"] for r in fake.audit)


@pytest.mark.parametrize("page_size", [1, 3])
async def test_an_ascending_listing_is_not_cut_short_as_newest_first(
    env: tuple[PublicInstantly, SqliteBus], page_size: int
) -> None:
    """The early stop needs proof of a newest-first order: a timestamp that fell. A page of one
    record (``audit_page_size: 1``) or of records sharing one timestamp (a bulk burst) proves
    nothing; with version-4-shaped ids (no ``last_id``: every poll a full read of the window) an
    ascending listing was taken for newest first, its read stopped after the first page, and the
    records added later were never published (101 of 103)."""
    fake, bus = env
    clock = FakeClock()
    now = clock.now()

    def rid(i: int) -> str:  # version-4 shaped: not time-ordered, so no incremental read
        return f"019c0000-0000-4000-8000-{i:012d}"

    fake.audit = [audit_record(rid(i), now - 200_000 + (0 if i < 3 else 20 * i)) for i in range(100)]
    async with poller(fake, bus, clock, streams=["audit_logs"], audit_page_size=page_size) as p:
        await p.poll_once()
        for k in range(3):
            clock.advance(60)
            fake.audit.append(audit_record(rid(5000 + k), clock.now() - 1, 37))
            await p.poll_once()
    ids = [e["source"]["record_id"] for e in await bus_docs(bus)]
    assert Counter(ids) == Counter(r["id"] for r in fake.audit)


async def test_an_audit_record_without_an_id_is_one_dead_letter(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """``id`` is required, yet a record without a usable one (absent, null, empty) was skipped with a
    log line and a drop counter: nothing on the bus said a record was lost. It is now a dead letter
    naming the problem, published once however many polls list it again; the records around it
    are published once each."""
    fake, bus = env
    clock = FakeClock()
    now = clock.now()
    no_id = {k: v for k, v in audit_record("x", now - 30, 37).items() if k != "id"}
    null_id = {**audit_record("x", now - 20, 38), "id": None}
    fake.audit = [audit_record("019c0000-0000-7000-8000-000000000001", now - 40), no_id, null_id,
                  audit_record("019c0000-0000-7000-8000-000000000002", now - 10)]  # fmt: skip
    async with poller(fake, bus, clock, streams=["audit_logs"], audit_overlap_secs=120) as p:
        assert (await p.poll_once())["audit_logs"] == 2
        for _ in range(3):
            clock.advance(60)
            assert (await p.poll_once())["audit_logs"] == 0
            assert p.last_failures == {}
        assert any("start_date" in s.query for s in fake.requests_to("audit-logs")[1:]), "a window re-read ran"
    letters = await bus_docs(bus, DEADLETTER_TOPIC)
    assert len(letters) == 2, letters
    for letter in letters:
        assert letter["reason"] == "normalize" and "no usable 'id'" in letter["error"]
        assert letter["original"]["stream"] == "audit_logs"
    assert sorted(orjson.loads(x["original"]["value"])["activity_type"] for x in letters) == [37, 38]
    ids = [e["source"]["record_id"] for e in await bus_docs(bus)]
    assert sorted(ids) == ["019c0000-0000-7000-8000-000000000001", "019c0000-0000-7000-8000-000000000002"]


async def test_a_listed_resource_without_an_id_is_one_dead_letter(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """Every listed resource requires ``id`` (accounts: ``email``). One without it was left out of the
    snapshot with a log line only. It is a dead letter naming the problem, once while the listings
    keep showing it, again if it comes back after it was gone; the other records diff as usual."""
    fake, bus = env
    t = "2026-01-01T00:00:00Z"
    good = {"id": "019c0000-0000-7000-8000-000000000601", "name": "ci", "scopes": ["leads:read"], "key": "k****",
            "organization_id": WS, "timestamp_created": t, "timestamp_updated": t}  # fmt: skip
    broken = {**good, "id": None, "name": "broken"}
    fake.lists = {"api-keys": [good, broken], "accounts": [{"organization": WS, "status": 1, "timestamp_created": t}]}
    clock = FakeClock()
    async with poller(fake, bus, clock, streams=["api_keys", "accounts"]) as p:
        assert (await p.poll_once())["api_keys"] == 1
        for _ in range(2):
            clock.advance(600)
            assert (await p.poll_once())["api_keys"] == 0
            assert p.last_failures == {}
        assert len(await bus_docs(bus, DEADLETTER_TOPIC)) == 2
        fake.lists["api-keys"] = [good]
        clock.advance(600)
        await p.poll_once()
        fake.lists["api-keys"] = [good, broken]
        clock.advance(600)
        await p.poll_once()
    letters = await bus_docs(bus, DEADLETTER_TOPIC)
    errors = sorted(x["error"] for x in letters)
    assert errors == ["accounts record has no usable identity ('email')", *["api_keys record has no usable 'id'"] * 2]
    assert all(x["original"]["stream"] in ("api_keys", "accounts") for x in letters)
    assert [e["type"] for e in await bus_docs(bus)] == ["api_key.baseline"]


async def test_a_non_object_in_the_audit_items_does_not_wedge_the_audit_log(
    env: tuple[PublicInstantly, SqliteBus],
) -> None:
    """``items`` is an array of AuditLog objects; one ``null`` or string among them made the whole page
    "malformed" and the audit log failed on every poll from then on (the records after it never
    published, the cursor stuck). The bad item is a dead letter, the others are published, the log
    goes on."""
    fake, bus = env
    clock = FakeClock()
    now = clock.now()
    fake.audit = [audit_record("019c0000-0000-7000-8000-000000000001", now - 40), None, "oops",
                  audit_record("019c0000-0000-7000-8000-000000000002", now - 10)]  # fmt: skip
    async with poller(fake, bus, clock, streams=["audit_logs"]) as p:
        assert (await p.poll_once())["audit_logs"] == 2
        assert p.last_failures == {}
        clock.advance(60)
        fake.audit.append(audit_record("019c0000-0000-7000-8000-000000000003", clock.now() - 1))
        assert (await p.poll_once())["audit_logs"] == 1
        assert p.last_failures == {}
    letters = await bus_docs(bus, DEADLETTER_TOPIC)
    assert sorted(x["original"]["value"] for x in letters) == ['"oops"', "null"]
    assert all("not a JSON object" in x["error"] for x in letters)
    ids = sorted(e["source"]["record_id"] for e in await bus_docs(bus))
    assert ids == [f"019c0000-0000-7000-8000-00000000000{i}" for i in (1, 2, 3)]


async def test_one_slow_endpoint_does_not_blind_the_other_streams(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """Large audit pages can be slow. A timeout on ``GET /audit-logs`` (the first stream of a poll) marked
    the whole workspace unreachable, so every snapshot stream of the poll failed unsent ("not sent:
    the server was unreachable earlier in this poll") although the host had just answered
    ``/workspaces/current``: one slow endpoint blinded the watcher to keys, members and webhooks
    on every poll. Only the slow stream fails now; a host that answered nothing in the poll still
    fails the rest at once."""
    fake, bus = env
    fake.lists = {"api-keys": [], "workspace-members": [], "webhooks": [], "workspace-group-members": [],
                  "block-lists-entries": [], "accounts": []}  # fmt: skip
    fake.answer("audit-logs", *[Answer(200, body={"items": []}, delay_secs=1.0)] * 2)
    clock = FakeClock()
    async with poller(fake, bus, clock, request_timeout_secs=0.3) as p:
        counts = await p.poll_once()
        assert set(p.last_failures) == {"audit_logs"}, p.last_failures
        assert "timeout" in p.last_failures["audit_logs"]
        assert counts["workspace"] == 1
        assert {s.tail for s in fake.seen} >= {"api-keys", "workspace-members", "webhooks", "accounts"}
        # A second slow answer in the same poll: the host is taken as gone, the rest is not sent.
        clock.advance(60)
        fake.answer("audit-logs", *[Answer(200, body={"items": []}, delay_secs=1.0)] * 2)
        fake.answer("api-keys", *[Answer(200, body={"items": []}, delay_secs=1.0)] * 2)
        sent = len(fake.seen)
        await p.poll_once()
        assert {"audit_logs", "api_keys", "members", "webhooks"} <= set(p.last_failures)
        assert "workspace-members" not in {s.tail for s in fake.seen[sent:]}


async def test_no_request_before_a_long_retry_after_has_passed(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """A 429 may carry ``Retry-After`` (RFC 9110 §10.2.3: how long to wait before a follow-up request;
    Instantly documents it for some endpoints). One above the client's 60 s backoff cap was cut to
    60 s: the retry came 30 s early, and the next polls (every 5 s) asked again at once. Now no
    request of the workspace is sent before the wait is over; the polls in between fail fast
    (``pipeline.stream_unavailable`` after three of them) and the one after it reads everything."""
    fake, bus = env
    fake.lists = {"api-keys": [], "workspace-members": [], "webhooks": []}
    clock = FakeClock()
    fake.now = clock.now
    fake.answer("api-keys", Answer(429, headers={"Retry-After": "90"}))
    budget = RequestBudget(100, 6000, clock=clock, sleep=FakeSleep(clock))
    cfg = WorkspaceConfig(
        api_key=SecretStr(KEY), base_url=fake.url, max_retries=2, streams=["api_keys", "members", "webhooks"],
        budget=BudgetConfig(requests_per_second=100, requests_per_minute=6000),
    )  # fmt: skip
    p = InstantlyWorkspacePoller("acme", cfg, bus, clock=clock, sleep=FakeSleep(clock), budget=budget,
                                 rng=random.Random(1))  # fmt: skip
    async with p:
        await p.poll_once()
        refused_at = fake.requests_to("api-keys")[0].at
        assert "api_keys" in p.last_failures
        while clock.now() < refused_at + 100:
            clock.advance(5)
            await p.poll_once()
        assert p.last_failures == {}
    after = [s for s in fake.seen if s.at > refused_at]
    assert after and min(s.at for s in after) >= refused_at + 90, [(s.tail, s.at - refused_at) for s in after]


# ------------------------------------------------------------------------- open enumerations
def snapshot_records_with_new_values() -> dict[str, list[dict[str, Any]]]:
    """One record per snapshot listing with a value Instantly's docs do not list (every enum is open),
    beside one that holds only documented values; optional fields absent, extra fields present."""
    t = "2026-01-01T00:00:00Z"
    return {
        "api-keys": [
            {"id": "019c0000-0000-7000-8000-000000000101", "name": "ci", "scopes": ["leads:read", "voice_agents:all"],
             "key": "masked****", "organization_id": WS, "timestamp_created": t, "timestamp_updated": t,
             "last_used_ip": "203.0.113.5"},
            {"id": "019c0000-0000-7000-8000-000000000102", "name": "ro", "scopes": ["all:read"], "key": "masked2****",
             "organization_id": WS, "timestamp_created": t, "timestamp_updated": t},
        ],
        "workspace-members": [
            {"id": "019c0000-0000-7000-8000-000000000201", "email": "new@acme.example", "user_id": "u1",
             "role": "billing_admin", "permissions": ["dashboard.view", "apiKeys.manage"], "timestamp_created": t,
             "workspace_id": WS, "accepted": True},
            {"id": "019c0000-0000-7000-8000-000000000202", "email": "ed@acme.example", "user_id": "u2",
             "role": "editor", "timestamp_created": t, "workspace_id": WS, "accepted": False},
        ],
        "webhooks": [
            {"id": "019c0000-0000-7000-8000-000000000301", "organization": WS, "timestamp_created": t,
             "target_hook_url": "https://hooks.acme.example/i", "event_type": "lead_ai_scored", "status": 2},
        ],
        "workspace-group-members": [
            {"id": "019c0000-0000-7000-8000-000000000401", "admin_workspace_id": WS, "sub_workspace_id": "s1",
             "status": "suspended", "timestamp_created": t, "timestamp_updated": t},
        ],
        "block-lists-entries": [],
        "accounts": [
            {"email": "Sender@Acme.example", "organization": WS, "status": 4, "warmup_status": 1, "provider_code": 12,
             "timestamp_created": t, "timestamp_updated": t},
        ],
    }  # fmt: skip


async def test_values_outside_the_documented_enums_are_flagged(env: tuple[PublicInstantly, SqliteBus]) -> None:
    """A role, scope, permission, webhook event type or status Instantly does not (yet) document still
    gives its event, and the event names the value in ``attributes.unknown_values``; before, a member
    holding a new role looked like any other (nothing said the pipeline could not judge it)."""
    fake, bus = env
    fake.lists = snapshot_records_with_new_values()
    clock = FakeClock()
    async with poller(fake, bus, clock) as p:
        counts = await p.poll_once()
    assert p.last_failures == {}
    assert counts["api_keys"] == 2 and counts["members"] == 2 and counts["accounts"] == 1
    flags = {e["source"]["record_id"]: e["attributes"].get("unknown_values") for e in await bus_docs(bus)}
    assert flags["019c0000-0000-7000-8000-000000000101"] == {"scopes": ["voice_agents:all"]}
    assert flags["019c0000-0000-7000-8000-000000000102"] is None
    assert flags["019c0000-0000-7000-8000-000000000201"] == {"role": "billing_admin", "permissions": ["apiKeys.manage"]}
    assert flags["019c0000-0000-7000-8000-000000000202"] is None
    assert flags["019c0000-0000-7000-8000-000000000301"] == {"event_type": "lead_ai_scored", "status": 2}
    assert flags["019c0000-0000-7000-8000-000000000401"] == {"status": "suspended"}
    assert flags["sender@acme.example"] == {"status": 4, "provider_code": 12}
    assert flags[WS] is None  # the workspace: no enum


def test_documented_enums_match_the_simulator_catalog() -> None:
    """The client's lists (:mod:`connectors.instantly.enums`) and the simulator's are the same documented enums."""
    from connectors.instantly import enums
    from connectors.instantly.sim import catalog

    assert set(catalog.SCOPES) == enums.SCOPES and len(enums.SCOPES) == 178
    assert set(catalog.ROLES) == enums.ROLES
    assert set(catalog.PERMISSIONS) == enums.PERMISSIONS
    assert set(catalog.WEBHOOK_EVENT_TYPES) == enums.WEBHOOK_EVENT_TYPES
    assert enums.unknown_values({"status": 1.0, "role": None}, {"status": enums.WEBHOOK_STATUSES}) == {}
    assert enums.unknown_values(
        {"status": True, "role": {"x": 1}}, {"status": enums.WEBHOOK_STATUSES, "role": enums.ROLES}
    ) == {"status": True, "role": "<dict>"}


async def test_no_secret_a_docs_shaped_answer_carries_reaches_the_bus_or_the_logs(
    env: tuple[PublicInstantly, SqliteBus], caplog: pytest.LogCaptureFixture
) -> None:
    """The docs say ``GET /api-keys`` returns ``key`` and ``GET /webhooks`` returns ``headers`` in clear;
    an audit record's ``audit_metadata`` is free-form, and a stranger's error body may echo the bearer
    key. Canaries in each: none reaches any topic or state value, nor a log line."""
    fake, bus = env
    register_secret(KEY)  # as the config loader does for the workspace's api_key
    canaries = ["CANARYkeyvalue0a1b2c3d4e5f", "CANARYhookauth9z8y7x6w", "CANARYmetatoken5v4u3t"]
    t = "2026-01-01T00:00:00Z"
    fake.lists = {
        "api-keys": [{"id": "019c0000-0000-7000-8000-000000000501", "name": "ci", "scopes": ["leads:read"],
                      "key": canaries[0], "organization_id": WS, "timestamp_created": t, "timestamp_updated": t}],
        "webhooks": [{"id": "019c0000-0000-7000-8000-000000000502", "organization": WS, "timestamp_created": t,
                      "target_hook_url": "https://hooks.acme.example/in", "event_type": "all_events",
                      "headers": {"Authorization": f"Bearer {canaries[1]}", "X-Note": canaries[1]}}],
    }  # fmt: skip
    clock = FakeClock()
    fake.audit = [audit_record("019c0000-0000-7000-8000-000000000503", clock.now() - 5, 37,
                               audit_metadata={"api_token": canaries[2], "note": f"token={canaries[2]}"})]  # fmt: skip
    echo = {"statusCode": 403, "error": "Forbidden", "message": f"key {KEY} lacks workspace_members:read"}
    fake.answer("workspace-members", Answer(403, body=echo))
    with caplog.at_level(logging.DEBUG):
        async with poller(fake, bus, clock) as p:
            await p.poll_once()
            assert "members" in p.last_failures and "api_keys" not in p.last_failures
    dumped = [r.value for r in await records(bus, (EVENTS_TOPIC, DEADLETTER_TOPIC))]
    dumped += list((await bus.state_items("")).values())
    assert len(dumped) > 5
    assert any(b"lacks workspace_members:read" in value for value in dumped), "the echoing message is published"
    logs = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in [*canaries, KEY]:
        assert not any(secret.encode() in value for value in dumped), secret
        assert secret not in logs, secret


# ------------------------------------------------------------------------------ webhook receiver
GUIDE_EVENT_TYPES = (
    "email_sent", "email_opened", "reply_received", "auto_reply_received", "link_clicked", "email_bounced",
    "lead_unsubscribed", "account_error", "campaign_completed", "lead_neutral", "lead_interested",
    "lead_not_interested", "lead_meeting_booked", "lead_meeting_completed", "lead_closed", "lead_out_of_office",
    "lead_wrong_person",
)  # fmt: skip
"""The payload ``event_type`` values of the guide "Webhook events" (developer.instantly.ai)."""


async def test_the_receiver_takes_every_payload_shape_the_guide_allows(tmp_path: Path) -> None:
    """Base fields only (optional ones absent), optional fields ``null``, extra lead keys, every
    documented ``event_type``, a custom label, ``timestamp`` with or without fractions and offset:
    one event each, the label flagged ``custom_label``. A JSON array (a batch: the guide documents
    one object per delivery) and a payload without ``workspace`` are dead letters naming the
    problem, answered 200 so Instantly does not retry and disable the webhook."""
    from pipeline.sources.webhook.receiver import WebhookReceiver
    from tests.unit.test_webhook_support import WS as HOOK_WS
    from tests.unit.test_webhook_support import events_of, hdrs, letters_of, make_config, serve

    base = {"workspace": HOOK_WS, "campaign_id": "019c0000-0000-7000-8000-000000000701", "campaign_name": "Q3"}
    stamps = ["2026-03-05T23:09:47.337Z", "2026-03-05T23:09:47Z", "2026-03-05T23:09:47+00:00"]
    bodies: list[Any] = [
        {**base, "event_type": et, "timestamp": stamps[i % 3], "n": i} for i, et in enumerate(GUIDE_EVENT_TYPES)
    ]
    bodies += [
        {**base, "event_type": "Hot Lead", "timestamp": stamps[0]},
        {"workspace": HOOK_WS, "event_type": "account_error", "timestamp": stamps[1], "email_account": "s@acme.io"},
        {**base, "event_type": "reply_received", "timestamp": stamps[2], "lead_email": None, "step": None,
         "unibox_url": None, "company_size": "51-200"},
    ]  # fmt: skip
    bad = [[{**base, "event_type": "email_sent", "timestamp": stamps[0]}] * 2,
           {"event_type": "email_sent", "timestamp": stamps[0], "campaign_id": "c"}]  # fmt: skip
    async with SqliteBus(tmp_path / "hooks.db") as bus:
        receiver = WebhookReceiver(make_config(), bus)
        async with serve(receiver) as c:
            for body in [*bodies, *bad]:
                resp = await c.post("/hooks/crm", data=orjson.dumps(body), headers=hdrs())
                assert resp.status == 200, await resp.text()
        evs = [orjson.loads(x.value) for x in await events_of(bus)]
        letters = await letters_of(bus)
    assert len(evs) == len(bodies)
    assert {e["type"] for e in evs} >= {f"webhook_delivery.{et}" for et in GUIDE_EVENT_TYPES}
    assert [e["attributes"]["custom_label"] for e in evs].count(True) == 1
    assert sorted(x["error"] for x in letters) == ["bad_shape: the body must be a JSON object",
                                                   "bad_shape: workspace must be a non-empty string"]  # fmt: skip
