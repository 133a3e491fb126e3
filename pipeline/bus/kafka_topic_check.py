"""What the Kafka bus creates on a topic, and whether a topic an operator made beforehand will do.

A topic created beforehand is used as it is when it can hold what the pipeline writes: a data
topic (events, alerts, dead letters) with any partition count and retention. It is refused,
with an error naming the topic and the setting, when using it would lose or misplace records:

* a keyed topic (state, receipts, the control topic) whose ``cleanup.policy`` lacks ``compact``
  (its newest value per key would expire with retention), or has ``compact,delete`` with a time or
  size limit (Kafka then discards old segments by ``retention.ms``/``retention.bytes`` and compacts
  only what is left: a cursor or snapshot not rewritten within the limit would vanish);
* a data topic whose ``cleanup.policy`` includes ``compact`` (compaction keeps one record per
  key, and the key is the workspace id: every other event of the workspace would vanish);
* a topic whose partition count is fixed by design (the state topic: 1; the control topic:
  ``CONTROL_PARTITIONS``, since a workspace's owner is its key's hash modulo that number).

A topic whose ``max.message.bytes`` is below what the bus sets at creation (the state topic's
5 MiB) is used with a warning (:func:`warnings`): it works until a value outgrows the limit, and
a state topic made by an earlier version has Kafka's 1 MB default.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.bus.base import TopicSpec


def min_insync_replicas(replication_factor: int) -> int:
    """``min.insync.replicas`` for a topic of this replication factor.

    Kafka's documented durable setup is replication 3 with ``min.insync.replicas=2`` and
    ``acks=all``: one broker may fail without stopping writes, and an acknowledged record is
    on two brokers. With 1 or 2 replicas that would stop writes whenever one broker is down, so 1.
    """
    return 2 if replication_factor >= 3 else 1


def creation_configs(spec: TopicSpec, replication_factor: int) -> dict[str, str]:
    """The topic configs the bus sets when it creates ``spec`` itself."""
    configs: dict[str, str] = dict(spec.extra)
    if spec.compacted:
        configs["cleanup.policy"] = "compact"
    elif spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    configs.setdefault("min.insync.replicas", str(min_insync_replicas(replication_factor)))
    return configs


def problems(spec: TopicSpec, phys: str, partitions: int, configs: Mapping[str, str]) -> list[str]:
    """Why the existing topic ``phys`` (``partitions``, its ``configs``) cannot serve as ``spec`` (empty: it can)."""
    out: list[str] = []
    policy = {p.strip() for p in configs.get("cleanup.policy", "delete").split(",") if p.strip()}
    if spec.compacted != ("compact" in policy):
        want, why = (
            ("compact", "it holds the newest value per key")
            if spec.compacted
            else ("delete", "compaction would keep one record per workspace")
        )
        out.append(f"topic {phys}: cleanup.policy={','.join(sorted(policy))} but it must be {want} ({why})")
    elif spec.compacted and "delete" in policy:
        for limit in ("retention.ms", "retention.bytes"):
            value = configs.get(limit, "-1")
            if value.strip() != "-1":
                out.append(
                    f"topic {phys}: cleanup.policy={','.join(sorted(policy))} with {limit}={value}: the newest value"
                    " of a key not written again within that limit would be deleted (set cleanup.policy=compact,"
                    " or retention.ms=-1 and retention.bytes=-1)"
                )
    if spec.fixed_partitions and partitions != spec.partitions:
        out.append(f"topic {phys}: partitions={partitions} but the pipeline needs exactly this many: {spec.partitions}")
    return out


def warnings(spec: TopicSpec, phys: str, configs: Mapping[str, str]) -> list[str]:
    """Settings of the existing topic ``phys`` below what the bus would create it with (it still serves)."""
    out: list[str] = []
    want = spec.extra.get("max.message.bytes")
    have = configs.get("max.message.bytes")
    if want is not None and have is not None and have.isdigit() and int(have) < int(want):
        out.append(
            f"topic {phys}: max.message.bytes={have}, below the {want} the pipeline creates it with:"
            " a larger value fails its transaction (raise it with kafka-configs.sh --bootstrap-server <broker>"
            f" --alter --entity-type topics --entity-name {phys} --add-config max.message.bytes={want})"
        )
    return out
