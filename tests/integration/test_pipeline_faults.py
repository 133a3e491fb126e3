"""Kill -9 the whole pipeline process at random points while the simulator keeps producing; count.

On both buses (the ``bus_kind`` fixture: SQLite file, and Kafka when ``KAFKA_BOOTSTRAP`` is set),
``instantly-audit run --config`` polls a simulator process that adds audit records every second
and changes keys, members and the webhook every few seconds. The pipeline is SIGKILLed at random
moments and restarted each time; then it runs once more undisturbed and is stopped with SIGTERM,
the generator stops, and ``instantly-audit run --once`` catches up. Then, read independently of
the pipeline (SQLite read-only; Kafka through kcat, read_committed):

* every simulator audit record id is in ``instantly.events.v1`` exactly once as
  ``source.record_id`` — lost 0, duplicated 0, nothing unexpected, no event id twice;
* records inserted behind the cursor during the run (back-dated ids, and new ids with old
  timestamps, both inside the overlap window) are published exactly once;
* each generated key and member change is one snapshot event (see ``helpers.snapshot_problems``);
* no key secret or webhook header value the simulator ever held is in the bus (file / topics) or
  in anything the pipeline processes printed.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import (
    PipelineRunner,
    bus_bytes,
    bus_events,
    exactly_once,
    leaked,
    simulator,
    snapshot_problems,
    tally,
    wait_for,
    write_config,
)

KILLS = {"sqlite": 10, "kafka": 4}


@pytest.mark.slow
def test_sigkilled_pipeline_loses_and_duplicates_nothing(
    bus_kind: str, bus_cfg: dict[str, Any], tmp_path: Path
) -> None:
    seed = random.randrange(1, 1 << 30)
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    source_id = f"acme-{uuid.uuid4().hex[:8]}"  # unique state keys on a shared Kafka broker
    late: list[str] = []
    with simulator(logs, seed=seed, rate=25.0, changes_every=2.0) as sim:
        config = write_config(tmp_path / "config.yaml", bus=bus_cfg, sim=sim, source_id=source_id)
        runner = PipelineRunner(config, logs, sim.key)

        def behind_the_cursor(i: int) -> None:
            if i % 4 == 1:
                late.append(sim.late_record(600.0, "backdated"))  # id minted 10 min ago: sorts among old ids
            elif i % 4 == 3:
                late.append(sim.late_record(900.0, "late"))  # new id, timestamp 15 min ago

        runner.kill_restart(KILLS[bus_kind], rng, min_secs=0.5, max_secs=3.5, after_kill=behind_the_cursor)
        runner.start()
        time.sleep(3.0)
        # The generator makes one change every 2 s in turn (key created, key deleted, member
        # invited, webhook rotated): run until each kind happened at least once, however fast
        # the kills went on a loaded machine.
        assert wait_for(lambda: sim.status()["changes"] >= 4, 60.0), sim.status()
        generated = sim.stop_generator()
        assert runner.stop() == 0, runner.last_log()
        assert runner.run_once() == 0, runner.last_log()
        expected = sim.audit_ids()
        secrets = sim.secrets()
        changes = sim.changes()

    events = bus_events(bus_cfg)
    count = exactly_once(expected, events, sim.workspace_id)
    polls = sum(1 for r in runner.log_records() if r.get("msg") == "Poll finished.")
    print(
        f"\n[{bus_kind}] seed {seed}: kills {runner.kills}, runs {runner.runs}, polls {polls}, "
        f"generated {generated['audit_generated']}, {count.line()}, late records {len(late)}"
    )
    assert count.records > 150, "the generator produced too little to be a test"
    assert not count.lost, f"lost {len(count.lost)} of {count.records}: {count.lost[:5]}"
    assert not count.duplicated, f"duplicated: {list(count.duplicated.items())[:5]}"
    assert not count.unexpected, f"events for ids the simulator never had: {count.unexpected[:5]}"
    assert not count.duplicate_event_ids, f"event ids published twice: {list(count.duplicate_event_ids)[:5]}"
    seen = tally(events, sim.workspace_id)
    assert late and all(seen[rid] == 1 for rid in late), {rid: seen[rid] for rid in late}
    assert snapshot_problems(events, sim.workspace_id, changes) == []
    assert changes["keys_deleted"] and changes["members_invited"] and changes["webhook_updates"], changes
    assert leaked(secrets, bus_bytes(bus_cfg)) == [], "a secret reached the bus"
    assert leaked(secrets, {"pipeline stdout/stderr": runner.output()}) == [], "a secret reached the logs"
