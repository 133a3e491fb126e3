"""``instantly-audit sinks setup NAME`` and ``sinks list``: the generic CLI over a sink's setup()."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.elasticsearch_setup import assets
from pipeline.cli.main import main
from tests.fakes.elasticsearch import FakeElasticsearch

API_KEY = "YmVuY2g6c2V0dXAta2V5"


def write_config(tmp_path: Path, url: str) -> Path:
    (tmp_path / "es.key").write_text(API_KEY)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"bus:\n  type: sqlite\n  path: {tmp_path}/bus.db\n"
        f"sinks:\n  es:\n    type: elasticsearch\n    url: {url}\n    api_key_file: {tmp_path}/es.key\n"
        f"  file:\n    type: jsonl\n    path: {tmp_path}/out.jsonl\n    format: ocsf\n"
    )
    return path


async def test_setup_installs_then_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """sinks setup es installs the templates and policies; run again, the cluster holds the same; a sink
    without setup says so; an unknown sink is a config error (exit 2)."""
    async with FakeElasticsearch(api_key=API_KEY) as es:
        es.setup.clear()
        cfg = str(write_config(tmp_path, es.url))
        assert await _run(["sinks", "setup", "es", "--config", cfg]) == 0
        first = dict(es.setup)
        assert await _run(["sinks", "setup", "es", "--config", cfg]) == 0
        assert es.setup == first == assets("elasticsearch")
        assert await _run(["sinks", "setup", "file", "--config", cfg]) == 0
        assert await _run(["sinks", "setup", "nope", "--config", cfg]) == 2
        assert await _run(["sinks", "list", "--config", cfg]) == 0
    out, err = capsys.readouterr()
    assert out.count("es: elasticsearch: _index_template/logs-instantly.audit installed") == 2
    assert "file: sink type 'jsonl' needs no setup" in out
    assert "es\telasticsearch\tformat=ecs" in out and "file\tjsonl\tformat=ocsf" in out
    assert "no such sink (known: es, file)" in err and API_KEY not in out + err


async def _run(argv: list[str]) -> int:
    """main() runs its own event loop: run it in a thread so the fake server keeps serving."""
    import asyncio

    return await asyncio.to_thread(main, argv)
