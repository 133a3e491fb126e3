"""Every unknown key gets a "did you mean" (docs/configuration.md), at any depth: under a dict of
models (``workspaces.<alias>``), a list of models, an optional model, a root model or a
discriminated union, not only directly under a model's field."""

from __future__ import annotations

import pytest
from pydantic import RootModel, ValidationError

from pipeline.config.base import Model, validation_error_lines
from pipeline.config.loader import parse_config
from pipeline.errors import ConfigError

WORKSPACE = "workspaces:\n  acme:\n    api_key: ${K}\n"


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ("    stream: [audit_logs]\n", "workspaces.acme.stream: unknown key (did you mean 'streams'?)"),
        (
            "    poll_intervall_secs: 5\n",
            "workspaces.acme.poll_intervall_secs: unknown key (did you mean 'poll_interval_secs'?)",
        ),
        (
            "    snapshot_interval: {accounts: 60}\n",
            "workspaces.acme.snapshot_interval: unknown key (did you mean 'snapshot_intervals'?)",
        ),
        (
            "    budget: {request_per_second: 3}\n",
            "workspaces.acme.budget.request_per_second: unknown key (did you mean 'requests_per_second'?)",
        ),
    ],
)
def test_workspace_typos_get_a_suggestion(extra: str, line: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(WORKSPACE + extra, env={"K": "key-0000"})
    assert str(ei.value).splitlines() == [line]


class Leaf(Model):
    interval_secs: float = 1.0


class Holder(Model):
    by_name: dict[str, Leaf] = {}
    items: list[Leaf] = []
    maybe: Leaf | None = None


class Root(RootModel[dict[str, Holder]]):
    pass


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"a": {"by_name": {"x": {"intervall_secs": 1}}}}, "a.by_name.x.intervall_secs"),
        ({"a": {"items": [{}, {"intervall_secs": 1}]}}, "a.items.1.intervall_secs"),
        ({"a": {"maybe": {"intervall_secs": 1}}}, "a.maybe.intervall_secs"),
        ({"a": {"by_nam": {}}}, "a.by_nam"),
    ],
)
def test_suggestions_through_any_container(data: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as ei:
        Root.model_validate(data)
    [line] = validation_error_lines(ei.value, Root)
    assert line.startswith(f"{where}: unknown key (did you mean '")
