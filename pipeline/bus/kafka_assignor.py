"""A partition assignor for the poller group that balances workspaces, not partitions.

Kafka's assignors (range, round-robin, sticky) give each member the same number of partitions.
On the control topic a partition stands for the workspaces whose ids hash to it, and those
counts are uneven: 24 workspaces over 12 partitions hashed 5/7/12 over three replicas under
round-robin. Here each member sends, in its JoinGroup metadata (``user_data``), how many
workspaces it knows per control partition (the configured ones, and the discovered ones it has
read); the group leader takes the largest count per partition over the members, then hands out
partitions heaviest first, each to the member with the least load so far (workspaces, then
partitions, then member id: the longest-processing-time greedy rule). Partitions with no known
workspace come last, each to the member with the fewest partitions (then the least load): the
workspaces an agency announces later hash over every partition alike, so those partitions are
spread by count. (Handed out by load like the others, they all went to whichever member had the
least load: at a fresh start with only the agency configured, one replica took partition 0 with
the agency and the other the 11 empty ones, and then 183 of the 200 sub-workspaces.)

Members list this assignor first and round-robin second, so a group that still has a member
of an older version (round-robin only) agrees on round-robin until that member is gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

Weights = Callable[[], Mapping[int, int]]
"""Workspaces this member knows per control partition."""


def balance(partitions: Iterable[int], weights: Mapping[int, int], members: Iterable[str]) -> dict[str, list[int]]:
    """Member → partitions: heaviest partition first, each to the least-loaded member (see the module docstring)."""
    names = sorted(members)
    out: dict[str, list[int]] = {m: [] for m in names}
    if not names:
        return out
    load = {m: 0 for m in names}
    for p in sorted(partitions, key=lambda p: (-weights.get(p, 0), p)):
        if weights.get(p, 0) > 0:
            m = min(names, key=lambda m: (load[m], len(out[m]), m))
        else:  # no workspace known yet: what is announced later lands on every partition alike
            m = min(names, key=lambda m: (len(out[m]), load[m], m))
        load[m] += weights.get(p, 0)
        out[m].append(p)
    return {m: sorted(ps) for m, ps in out.items()}


class WorkspaceBalancedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Balances the number of workspaces per member (see the module docstring)."""

    name = "instantly-audit-workspaces"
    version = 0

    def __init__(self, weights: Weights):
        self._weights = weights

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """This member's subscription, with its workspace count per partition as user data."""
        doc = {str(p): int(n) for p, n in self._weights().items() if n > 0}
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), orjson.dumps(doc))

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """The leader's assignment of every subscribed topic's partitions."""
        weights: dict[int, int] = {}
        for meta in members.values():
            for p, n in _user_weights(meta.user_data).items():
                weights[p] = max(weights.get(p, 0), n)
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        result: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for topic in topics:
            parts = cluster.partitions_for_topic(topic) or set()
            subscribers = [m for m, meta in members.items() if topic in meta.subscription]
            for member, ps in balance(parts, weights, subscribers).items():
                if ps:
                    result[member][topic] = ps
        return {
            member: ConsumerProtocolMemberAssignment(self.version, sorted(result[member].items()), b"")
            for member in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Nothing to remember between rebalances."""


def _user_weights(raw: bytes | None) -> dict[int, int]:
    try:
        doc = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[int, int] = {}
    for k, v in doc.items():
        if isinstance(k, str) and k.isdigit() and isinstance(v, int) and v > 0:
            out[int(k)] = v
    return out
