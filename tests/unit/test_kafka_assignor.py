"""The poller group's assignor balances workspaces per replica, where round-robin balances partitions."""

from __future__ import annotations

from collections import Counter

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.partitioner import DefaultPartitioner

from pipeline.bus.kafka_assignor import WorkspaceBalancedAssignor, balance

PARTS = list(range(12))


def workspace_weights(n: int) -> Counter[int]:
    """Workspaces ``ws00``... per control partition, by Kafka's murmur2 partitioner."""
    part = DefaultPartitioner()
    return Counter(part(f"ws{i:02d}".encode(), PARTS, PARTS) for i in range(n))


def loads(assignment: dict[str, list[int]], weights: Counter[int]) -> list[int]:
    return sorted(sum(weights[p] for p in ps) for ps in assignment.values())


def test_24_workspaces_over_3_replicas_even() -> None:
    """The 24 workspaces of the replica test: round-robin gives 5/7/12, the balanced assignor 8/8/8."""
    w = workspace_weights(24)
    round_robin = {m: [p for p in PARTS if p % 3 == i] for i, m in enumerate("abc")}
    assert loads(round_robin, w) == [5, 7, 12]
    got = balance(PARTS, w, ["a", "b", "c"])
    assert loads(got, w) == [8, 8, 8]
    assert sorted(p for ps in got.values() for p in ps) == PARTS  # every partition, once
    assert loads(balance(PARTS, w, ["a", "b"]), w) == [12, 12]


def test_empty_partitions_spread_by_count() -> None:
    """No workspace known anywhere: partitions are still spread evenly (a later announcement lands somewhere)."""
    got = balance(PARTS, {}, ["m2", "m1", "m3"])
    assert sorted(len(ps) for ps in got.values()) == [4, 4, 4]
    assert balance(PARTS, {}, []) == {}


def test_unknown_partitions_spread_by_count_beside_known_ones() -> None:
    """Only the agency is configured (one workspace, one partition): the 11 partitions where its
    sub-workspaces will be announced are spread by count, not all given to the other member."""
    part = DefaultPartitioner()
    agency = part(b"agency", PARTS, PARTS)
    two = balance(PARTS, {agency: 1}, ["a", "b"])
    assert sorted(len(ps) for ps in two.values()) == [6, 6]
    three = balance(PARTS, {agency: 1}, ["a", "b", "c"])
    assert sorted(len(ps) for ps in three.values()) == [4, 4, 4]
    subs = Counter(part(f"agency--sub-{i:03d}".encode(), PARTS, PARTS) for i in range(200))
    shares = sorted(sum(subs[p] for p in ps) for ps in two.values())
    assert shares[0] >= 60, shares  # was [17, 183] by this hash: one replica polled almost everything
    assert sorted(p for ps in three.values() for p in ps) == PARTS


def test_assign_uses_the_largest_count_any_member_reports() -> None:
    """Members report what they know; the leader takes the largest per partition and balances on it."""
    weights = {0: 6, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}
    members = {
        "m1": ConsumerProtocolMemberMetadata(0, ["control"], orjson.dumps({"0": 6, "1": 1, "2": 1})),
        "m2": ConsumerProtocolMemberMetadata(0, ["control"], orjson.dumps({"3": 1, "4": 1, "5": 1, "6": 1})),
        "m3": ConsumerProtocolMemberMetadata(0, ["control"], b"not json"),
    }
    cluster = ClusterMetadata()
    cluster._partitions = {"control": {p: None for p in range(7)}}  # what partitions_for_topic reads
    out = WorkspaceBalancedAssignor(dict).assign(cluster, members)
    got = {m: [p for _t, ps in a.assignment for p in ps] for m, a in out.items()}
    assert sorted(p for ps in got.values() for p in ps) == list(range(7))
    assert loads(got, Counter(weights)) == [3, 3, 6]  # the 6-workspace partition alone, the rest split 3/3
    meta = WorkspaceBalancedAssignor(lambda: {2: 3, 5: 0}).metadata(["control"])
    assert meta.subscription == ["control"] and orjson.loads(meta.user_data) == {"2": 3}
