"""Every metric the docs name, in a PromQL block or in running text, is one ``/metrics`` exports.

An operator copies queries and metric names from the docs into alerts and dashboards; a name the
code does not export (renamed, misspelt, a unit suffix missing) makes a rule that never fires.
PromQL blocks are parsed with ``promql-parser`` (the same extractor as the shipped alerts); names in
the text are read from backticks, with ``{a,b}`` alternatives expanded. The catalog is
``pipeline.observability.metrics.METRICS``, and ``test_telemetry`` checks a scrape shows every
series of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.observability.metrics import METRICS, prometheus_series
from tests.unit.test_deploy import PROMETHEUS_BUILTINS, check_expr

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```promql\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]*\bpipeline_[a-z0-9_{},]*[^`\n]*)`")
NAME = re.compile(r"\bpipeline_[a-z0-9_]*(?:\{[a-z0-9_,]+\}[a-z0-9_]*)?")
NOT_METRICS = {
    "pipeline_key_name": "a setting of the check section (docs/configuration.md)",
    "pipeline_scopes": "part of the finding id api_key.pipeline_scopes",
}
"""Backticked words that start like a metric but are not one."""


def expand(token: str) -> list[str]:
    """``pipeline_x_{a,b}_total`` → both names; a label selector ``name{label}`` → the name."""
    m = re.fullmatch(r"(pipeline_[a-z0-9_]*?)\{([a-z0-9_,]+)\}([a-z0-9_]*)", token)
    if m is None:
        return [token]
    if "," not in m.group(2) and not m.group(3) and not m.group(1).endswith("_"):
        return [m.group(1)]  # `pipeline_source_paused{consumer_group}`: a label, not alternatives
    return [m.group(1) + alt + m.group(3) for alt in m.group(2).split(",")]


def named_in_text(text: str) -> set[str]:
    names: set[str] = set()
    for span in INLINE.findall(text):
        for token in NAME.findall(span):
            names.update(n for n in expand(token) if n not in NOT_METRICS and not n.endswith("_"))
    return names


def test_expand_reads_alternatives_and_labels() -> None:
    assert expand("pipeline_component_events_{received,sent}_total") == [
        "pipeline_component_events_received_total",
        "pipeline_component_events_sent_total",
    ]
    assert expand("pipeline_source_paused{consumer_group}") == ["pipeline_source_paused"]
    assert named_in_text("see `pipeline_latency_seconds_bucket|_sum|_count` and `x`") == {
        "pipeline_latency_seconds_bucket"
    }


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_promql_in_the_docs_uses_exported_metrics_and_labels(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for i, expr in enumerate(FENCE.findall(text)):
        check_expr(expr.strip(), f"{path.name} promql block {i + 1}")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_metric_names_in_the_docs_are_exported(path: Path) -> None:
    known = prometheus_series() | {m.family for m in METRICS} | PROMETHEUS_BUILTINS
    unknown = named_in_text(path.read_text(encoding="utf-8")) - known
    assert not unknown, f"{path.name} names metrics /metrics does not export: {sorted(unknown)}"


def test_the_docs_name_every_exported_metric() -> None:
    """The operations page's catalog lists each metric an operator can scrape."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    named = named_in_text(text)
    missing = {m.series for m in METRICS if m.instrument != "histogram"} - named
    assert not missing, f"docs/operations.md does not name {sorted(missing)}"
