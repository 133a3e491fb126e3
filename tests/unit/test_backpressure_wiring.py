"""``bus.max_consumer_lag`` wires one backpressure gate into the pollers of ``run`` (and only then)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.bus.sqlite import SqliteBus
from pipeline.config.loader import load_config
from pipeline.topology import Pipeline


def config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"bus:\n  type: sqlite\n  path: {tmp_path}/bus.db\n{extra}"
        "workspaces:\n"
        "  acme:\n    api_key: ${WIRING_TEST_KEY}\n    base_url: http://127.0.0.1:9\n"
        "  agency:\n    api_key: ${WIRING_TEST_KEY}\n    base_url: http://127.0.0.1:9\n"
        "    discover_subworkspaces: true\n"
        f"sinks:\n  file:\n    type: jsonl\n    path: {tmp_path}/out.jsonl\n"
    )
    return path


@pytest.mark.parametrize("once", [False, True])
def test_bound_set_pollers_wait_at_one_gate(tmp_path: Path, once: bool) -> None:
    """With the bound every poller (agencies too) gets the same gate, watching the rules and each sink;
    ``run --once`` never waits."""
    cfg = load_config(config(tmp_path, "  max_consumer_lag: 100\n"), env={"WIRING_TEST_KEY": "k-wiring-test"})

    async def main() -> None:
        async with SqliteBus(tmp_path / "bus.db") as bus, Pipeline(cfg, bus, {"pollers"}, once=once) as pipe:
            names = [n for n, _ in pipe.tasks(asyncio.Event())]
            if once:
                assert pipe.backpressure is None
                assert all(p.backpressure is None for p in pipe.pollers)
                return
            gate = pipe.backpressure
            assert gate is not None and gate.bound == 100
            assert [g for g, _ in gate.groups] == ["rules", "sink-file"]
            assert {p.source_id for p in pipe.pollers} == {"acme", "agency"}
            assert all(p.backpressure is gate for p in pipe.pollers)
            assert "pollers:backpressure" in names

    asyncio.run(main())


def test_no_bound_no_gate(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, ""), env={"WIRING_TEST_KEY": "k-wiring-test"})

    async def main() -> None:
        async with SqliteBus(tmp_path / "bus.db") as bus, Pipeline(cfg, bus, {"pollers"}) as pipe:
            assert pipe.backpressure is None
            assert all(p.backpressure is None for p in pipe.pollers)
            assert "pollers:backpressure" not in [n for n, _ in pipe.tasks(asyncio.Event())]

    asyncio.run(main())
