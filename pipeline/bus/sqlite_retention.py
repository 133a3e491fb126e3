"""Retention of the embedded bus: drop records past a topic's age or beyond the partition size cap,
and compact the compacted topics.

Compacted topics (receipts) are never trimmed by age or size: like Kafka's log compaction, each
partition keeps the newest record of every key and loses the older ones (a completeness receipt is
rewritten at every poll that changes its hour, so its topic otherwise grew by thousands of records a
day per workspace). Offsets are not renumbered: a compacted partition has holes, which readers skip.
A partition is compacted once its records written since the last compaction reach
:data:`COMPACT_MIN_DIRTY` and the number it kept (a cost proportional to what was written), in
steps that each examine at most ``limit`` records, newest first, resuming where the previous one
stopped (:class:`~pipeline.bus.sqlite_format.CompactionPass`).

Other topics are trimmed from their start, at most ``limit`` records per call and transaction, and
``tp_meta.log_start`` moves past the removed records, so consumers that had not read them resume at
the first retained record. The caller (:meth:`pipeline.bus.sqlite.SqliteBus.enforce_retention`)
calls again until less than ``limit`` went and no compaction pass is under way, so the store's one
thread is never held long by a large backlog (a first trim after weeks): the pipeline's own commits
run between the calls.
"""

from __future__ import annotations

from pipeline.bus.sqlite_format import CompactionPass, StoredTopic, rowid
from pipeline.bus.sqlite_store import SqliteStore

COMPACT_MIN_DIRTY = 1_000
"""Records written to a compacted partition since its last compaction before it is compacted again."""


def enforce_retention(
    store: SqliteStore, retention_ms: int | None, max_bytes: int | None, limit: int | None = None
) -> int:
    """Delete expired or over-cap records on every non-compacted topic and superseded ones on the
    compacted topics, at most ``limit`` of them (no limit: all); return how many (store thread only).

    ``retention_ms`` applies to topics without their own retention.
    """
    db = store.conn()
    now_ms = int(store.clock() * 1000)
    removed = 0
    for t in list(store.topics.values()):
        if t.compacted:
            for p in range(t.partitions):
                removed += _compact(store, t, p, None if limit is None else max(0, limit - removed))
            continue
        age = t.retention_ms if t.retention_ms is not None else retention_ms
        for p in range(t.partitions):
            tp_id = t.tp_id(p)
            start, end = store.bounds(tp_id)
            if limit is not None:  # this step's reach: never scan past what it may delete
                end = min(end, start + max(0, limit - removed))
            cut = start
            if age is not None:
                cut = max(cut, store.offset_for_time(tp_id, now_ms - age))
            if max_bytes is not None and cut < end:  # (cut >= end: this step deletes up to end anyway)
                cut = _size_cut(store, tp_id, start=start, age_cut=cut, end=end, cap=max_bytes)
            cut = min(cut, end)
            if cut <= start:
                continue
            lo, hi = rowid(tp_id, start), rowid(tp_id, cut)
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = db.execute(
                    "SELECT COALESCE(SUM(length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0)),0),"
                    " COUNT(*) FROM records WHERE id>=? AND id<?",
                    (lo, hi),
                ).fetchone()
                db.execute("DELETE FROM records WHERE id>=? AND id<?", (lo, hi))
                db.execute("UPDATE tp_meta SET log_start=?, bytes=bytes-? WHERE tp=?", (cut, gone[0], tp_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            removed += int(gone[1])
    return removed


def _compact(store: SqliteStore, t: StoredTopic, partition: int, budget: int | None) -> int:
    """One step of the compaction of a compacted partition: examine at most ``budget`` records
    (no budget: all), newest first from where the previous step stopped, and delete those a newer
    record of the same key supersedes (records without a key are kept); return how many went.

    A pass starts once enough was written since the last one and covers the partition as it was
    then (``CompactionPass.end``); it walks backwards, so the first record met of a key is its newest
    and every older one met after it is stale: one scan, the keys seen so far in memory. Each step
    resumes at ``CompactionPass.cursor`` instead of re-reading the partition (which made a pass
    quadratic: 600k records took 120 steps and 48 s, the last steps 1.2 s each on the store thread).
    Records written during a pass are beyond its end: the next pass looks at them. The partition's
    last record is always the newest of its key, so it is never removed.
    """
    if budget == 0:
        return 0
    db = store.conn()
    tp_id = t.tp_id(partition)
    start, end = store.bounds(tp_id)
    run = store.compacting.get(tp_id)
    if run is None:
        clean_end, live = store.compacted.get(tp_id, (0, 0))
        if end - clean_end < max(COMPACT_MIN_DIRTY, live):
            return 0
        run = store.compacting[tp_id] = CompactionPass(end=end, cursor=end)
    rows = db.execute(
        "SELECT id, key, length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0) FROM records"
        " WHERE id>=? AND id<? ORDER BY id DESC LIMIT ?",
        (rowid(tp_id, start), rowid(tp_id, run.cursor), -1 if budget is None else budget),
    ).fetchall()
    stale: list[tuple[int, int]] = []
    for rid, key, size in rows:
        if key is not None and (k := bytes(key)) in run.seen:
            stale.append((rid, size))
            continue
        if key is not None:
            run.seen.add(k)
        run.kept += 1
    if stale:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM records WHERE id=?", [(rid,) for rid, _ in stale])
            db.execute("UPDATE tp_meta SET bytes=bytes-? WHERE tp=?", (sum(size for _, size in stale), tp_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    if budget is None or len(rows) < budget:  # reached the partition's start: the pass is done
        del store.compacting[tp_id]
        store.compacted[tp_id] = (run.end, run.kept)
    else:
        run.cursor = rows[-1][0] - rowid(tp_id, 0)
    return len(stale)


def _size_cut(store: SqliteStore, tp_id: int, *, start: int, age_cut: int, end: int, cap: int) -> int:
    """The first offset to keep so that what is left of the partition fits in ``cap`` bytes: the
    newest records that fit, among those at or after ``age_cut`` (the ones before it go anyway).

    The bytes to drop beyond the age cut are the partition's minus the cap minus those of
    ``[start, age_cut)``: those records are deleted in any case, so counting them again deleted
    about (old bytes + excess) instead of max(old bytes, excess). The scan reaches ``end`` at most
    (this step's reach); the caller only asks when ``age_cut < end``, so ``[start, age_cut)`` holds
    less than a step's records.
    """
    db = store.conn()
    (size,) = db.execute("SELECT bytes FROM tp_meta WHERE tp=?", (tp_id,)).fetchone()
    if size <= cap:
        return age_cut
    (old,) = db.execute(
        "SELECT COALESCE(SUM(length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0)),0) FROM records"
        " WHERE id>=? AND id<?",
        (rowid(tp_id, start), rowid(tp_id, age_cut)),
    ).fetchone()
    excess = size - old - cap
    cut = age_cut
    for (length,) in db.execute(
        "SELECT length(value)+COALESCE(length(key),0)+COALESCE(length(headers),0) FROM records"
        " WHERE id>=? AND id<? ORDER BY id",
        (rowid(tp_id, age_cut), rowid(tp_id, end)),
    ):
        if excess <= 0:
            break
        excess -= length
        cut += 1
    return cut
