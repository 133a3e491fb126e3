"""docs/configuration.md says it lists every option: every field of every config model a file can
set — the runtime's sections, the connectors' registered sections, the rule packs' rule options,
the webhook kinds' source options — is named in that page's section for it, and every sink type's
own options in its section of docs/sinks.md (the page configuration.md sends them to). A new
option without its line fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, RootModel

from pipeline.config.model import INTERNAL_KEYS, KafkaBusConfig, PipelineConfig, SqliteBusConfig
from pipeline.config.vault import VaultSettings
from pipeline.delivery.base import SinkConfig
from pipeline.delivery.http import HttpSinkConfig
from pipeline.delivery.registry import sink_class, sink_types
from pipeline.registry import WEBHOOK_KINDS, config_sections, load_group
from pipeline.rules.base import RuleParams
from pipeline.rules.config import RulesSettings
from pipeline.rules.packs import rule_packs
from pipeline.sources.webhook.config import SourceConfig, WebhookConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _sections(text: str, heading: str) -> dict[str, str]:
    """The page's ``heading``-level sections by title."""
    parts = re.split(rf"(?m)^{heading} (.+)$", text)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


CONFIGURATION = _sections((DOCS / "configuration.md").read_text(), "###")
SINKS = _sections((DOCS / "sinks.md").read_text(), "##")


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models a value of ``annotation`` may be (through Optional, unions, dicts, lists, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if issubclass(annotation, RootModel):
            return _models(annotation.model_fields["root"].annotation)
        return [annotation]
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _models(args[0])
    if origin in (Union, UnionType, list, tuple, set, frozenset):
        return [m for a in args for m in _models(a)]
    if origin is dict and len(args) == 2:
        return _models(args[1])
    return []


NOT_FILE_KEYS: set[tuple[type[BaseModel], str]] = {(SourceConfig, "options")}
"""Fields no file sets: a webhook source's ``options`` holds its kind's keys (walked from the kind)."""


def key_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = (), skip: frozenset[str] = frozenset()
) -> Iterator[tuple[str, ...]]:
    """Every key a file can set under ``model`` (nested models' keys too), as paths."""
    for m in _models(model):
        for name, field in m.model_fields.items():
            if name in skip or (m, name) in NOT_FILE_KEYS:
                continue
            yield (*prefix, name)
            for inner in _models(field.annotation):
                yield from key_paths(inner, (*prefix, name))


def named(text: str, key: str) -> bool:
    """Whether ``text`` names ``key``: `` `key` ``, `` `parent.key` ``, `` `key.child` ``, `` `key: value` ``
    or a YAML ``key:``."""
    k = re.escape(key)
    return bool(
        re.search(rf"`(?:[^`\s]*\.)?{k}(?:[.:][^`]*)?`", text)
        or re.search(rf"(?m)^\s*{k}:", text)
        or re.search(rf"[{{,]\s*{k}:", text)
    )


def _runtime() -> list[tuple[str, tuple[str, ...]]]:
    """(section of configuration.md, key path) for the runtime's own sections."""
    out: list[tuple[str, tuple[str, ...]]] = []
    by_section: dict[str, list[type[BaseModel]]] = {
        "bus": [SqliteBusConfig, KafkaBusConfig],
        "rules": [RulesSettings],
        "sinks": [SinkConfig, HttpSinkConfig],
        "webhook": [WebhookConfig],
        "secret_managers": [VaultSettings],
    }
    for key, field in PipelineConfig.model_fields.items():
        if key in INTERNAL_KEYS or key in by_section:
            continue
        by_section[key] = _models(field.annotation)
    for section, models in by_section.items():
        for model in models:
            out += [(section, p) for p in key_paths(model)]
    return out


def _connectors() -> list[tuple[str, tuple[str, ...]]]:
    return [(key, p) for key, model in config_sections().items() for p in key_paths(model)]


def _rule_options() -> list[tuple[str, tuple[str, ...]]]:
    base = frozenset(RuleParams.model_fields)
    return [
        ("rules", (cls.meta.id, *p))
        for pack in rule_packs()
        for cls in pack.rules
        for p in key_paths(cls.Params, skip=base)
    ]


def _webhook_kinds() -> list[tuple[str, tuple[str, ...]]]:
    return [("webhook", ("sources", *p)) for kind in load_group(WEBHOOK_KINDS).values()
            for p in key_paths(kind.Options)]  # fmt: skip


CASES = sorted(set(_runtime() + _connectors() + _rule_options() + _webhook_kinds()))


def test_every_section_has_a_heading() -> None:
    runtime = {k for k in PipelineConfig.model_fields if k not in INTERNAL_KEYS}
    assert sorted((runtime | set(config_sections())) - set(CONFIGURATION)) == []


@pytest.mark.parametrize(("section", "path"), CASES, ids=[f"{s}:{'.'.join(p)}" for s, p in CASES])
def test_every_option_is_in_configuration_md(section: str, path: tuple[str, ...]) -> None:
    assert named(CONFIGURATION.get(section, ""), path[-1]), (
        f"docs/configuration.md, section {section}: no line for {'.'.join(path)}"
    )


SINK_CASES = sorted(
    (t, p) for t in sink_types() for p in key_paths(sink_class(t).Config, skip=frozenset(HttpSinkConfig.model_fields))
)


def _sink_section(type_name: str) -> str:
    return next((body for title, body in SINKS.items() if f"(`{type_name}`)" in title), "")


@pytest.mark.parametrize("type_name", sink_types())
def test_every_sink_type_has_a_section_in_sinks_md(type_name: str) -> None:
    assert _sink_section(type_name), f"docs/sinks.md: no section titled '... (`{type_name}`)'"


@pytest.mark.parametrize(("type_name", "path"), SINK_CASES, ids=[f"{t}:{'.'.join(p)}" for t, p in SINK_CASES])
def test_every_sink_option_is_in_sinks_md(type_name: str, path: tuple[str, ...]) -> None:
    shared = SINKS.get("Options every sink has", "")
    assert named(_sink_section(type_name), path[-1]) or named(shared, path[-1]), (
        f"docs/sinks.md, section for {type_name}: no line for {'.'.join(path)}"
    )


@pytest.mark.parametrize("type_name", sink_types())
def test_a_sink_url_is_documented_as_the_model_has_it(type_name: str) -> None:
    """A sink whose ``url`` has a default is documented with that default, not as required (the
    PagerDuty sink was documented as needing a ``url``; it defaults to the Events API)."""
    field = sink_class(type_name).Config.model_fields.get("url")
    if field is None or field.is_required():
        return
    assert str(field.default) in _sink_section(type_name)
    shared = " ".join(SINKS["Options every sink has"].split())
    claim = re.search(r"also take `url` \(required(?P<rest>[^)]*)\)", shared)
    assert claim is None or f"`{type_name}`" in claim.group("rest"), "sinks.md: url required for every HTTP sink"
