"""The ``rules`` config section: validated once into frozen models and compiled rules.

Shape (every key optional; a key with a dot is a rule id)::

    rules:
      defaults: {enabled: true, suppress_secs: 3600}
      tick_interval_secs: 60
      allowlists:
        member_emails: [ops@partner.io]
        member_domains: [acme.com]          # "*.acme.com" for subdomains
        webhook_hosts: [hooks.acme.com, "*.zapier.com"]
        ip_networks: [203.0.113.0/24]       # trusted for auth.login_new_ip
      protected_domains: [acme.com, rival.io]   # must stay on the block list
      files: [rules/]                       # YAML rule files or directories (relative to the config)
      custom: []                            # YAML rules inline
      api_key.stale: {key_max_age_days: 60, suppress_secs: 604800}
      auth.login_new_ip: {enabled: false}

Every problem becomes one line of a :class:`~pipeline.errors.ConfigError` naming its key path,
e.g. ``rules.api_key.stale.key_max_age_days: Input should be greater than 0 (got -1)``.
Loading reads YAML rule files; nothing else here does I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, IPvAnyNetwork, ValidationError, field_validator

from pipeline.config.base import Model, validation_error_lines
from pipeline.config.yaml_keys import repeated_key
from pipeline.config.yaml_load import safe_load_all
from pipeline.errors import ConfigError
from pipeline.rules.base import ATTACK_PATTERN, DAY, RULE_ID_PATTERN, CatalogRule, Rule, RuleMeta, RulePack, RuleParams
from pipeline.rules.correlation import CorrelationSpec, EntrySpec, compile_correlation
from pipeline.rules.lists import SharedLists
from pipeline.rules.matcher import MatchRuleSpec, RuleSyntaxError, compile_rule, rule_problems
from pipeline.rules.packs import rule_packs
from pipeline.rules.reach import unknown_types


def _norm_list(v: Any, *, strip_at: bool = False) -> Any:
    if not isinstance(v, list):
        return v
    out = []
    for item in v:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("entries must be non-empty strings")
        s = item.strip().lower().rstrip(".")
        out.append(s.lstrip("@") if strip_at else s)
    return out


class Defaults(Model):
    """Defaults for every rule."""

    enabled: bool = Field(True, description="built-in rules run unless disabled one by one")
    suppress_secs: float = Field(3600.0, ge=0, le=90 * DAY)


class AllowLists(Model):
    """What is expected: members, webhook targets and trusted networks."""

    member_emails: list[str] = Field(default_factory=list)
    member_domains: list[str] = Field(default_factory=list)
    webhook_hosts: list[str] = Field(default_factory=list)
    ip_networks: list[IPvAnyNetwork] = Field(default_factory=list)

    @field_validator("member_emails", "webhook_hosts", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return _norm_list(v)

    @field_validator("member_domains", mode="before")
    @classmethod
    def _domains(cls, v: Any) -> Any:
        return _norm_list(v, strip_at=True)

    @field_validator("member_emails")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for e in v:
            if e.count("@") != 1 or e.startswith("@") or e.endswith("@"):
                raise ValueError(f"{e!r} is not an email address")
        return v


class RulesSettings(Model):
    """The reserved (non-rule) keys of the section."""

    defaults: Defaults = Defaults()
    tick_interval_secs: float = Field(60.0, gt=0, le=DAY)
    allowlists: AllowLists = AllowLists()
    protected_domains: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    custom: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("protected_domains", mode="before")
    @classmethod
    def _domains(cls, v: Any) -> Any:
        return _norm_list(v, strip_at=True)


RESERVED = tuple(RulesSettings.model_fields)


def shared_lists(s: RulesSettings) -> SharedLists:
    """The allowlists of validated settings, shaped for the rules."""
    a = s.allowlists
    return SharedLists(frozenset(a.member_emails), tuple(a.member_domains), tuple(a.webhook_hosts),
                       tuple(a.ip_networks), tuple(dict.fromkeys(s.protected_domains)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every known rule (``rules``, enabled or not) with the shared settings."""

    rules: tuple[Rule, ...]
    settings: RulesSettings
    lists: SharedLists
    builtin: frozenset[str] = frozenset()
    """The ids of the rules that come from installed rule packs (the rest are the user's)."""

    @property
    def enabled(self) -> tuple[Rule, ...]:
        """The rules that run."""
        return tuple(r for r in self.rules if r.params.enabled)

    def get(self, rule_id: str) -> Rule | None:
        """A rule by id."""
        return next((r for r in self.rules if r.meta.id == rule_id), None)


# ---- YAML rule files -------------------------------------------------------------------------
def _docs_in(path: Path) -> list[tuple[str, Any, yaml.Node | None]]:
    """(where, raw rule, its YAML node) for every rule in a YAML file.

    Raises:
        ConfigError: the file cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
        loaded = list(safe_load_all(text))  # first: it reports nesting too deep
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        for node in nodes:
            if (repeated := repeated_key(node)) is not None:
                raise ConfigError(f"{path}: not valid YAML at {repeated}")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the rule file ({err.strerror or type(err).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {err})") from None
    aligned: list[yaml.Node | None] = list(nodes) if len(nodes) == len(loaded) else [None] * len(loaded)
    pairs = zip(loaded, aligned, strict=True)
    out: list[tuple[str, Any, yaml.Node | None]] = []
    for d, at in pairs:
        if d is None or is_case_file(d):
            continue  # test cases beside the rules (pipeline.rules.testing), not a rule
        items = d.get("rules") if isinstance(d, dict) and set(d) == {"rules"} else d
        if items is not d and isinstance(at, yaml.MappingNode):
            at = at.value[0][1]  # the node of `rules:`
        if isinstance(items, list):
            subs = at.value if isinstance(at, yaml.SequenceNode) and len(at.value) == len(items) else None
            start = len(out)  # (first: len(out) grows while extend reads the generator)
            out.extend((f"{path}: rules[{start + i}]", r, subs[i] if subs else None) for i, r in enumerate(items))
        else:
            out.append((f"{path}: rules[{len(out)}]", items, at))
    return out


def line_of(node: yaml.Node | None, keypath: str) -> int | None:
    """The 1-based line of ``keypath`` (``detection.sel.actor.ip|contains``) inside a rule's YAML node: the
    deepest key or item of the path found (keys may hold dots, so the longest key that prefixes the rest is
    taken at each level); None without a node."""
    if node is None:
        return None
    line, rest = node.start_mark.line, keypath
    while rest:
        if isinstance(node, yaml.MappingNode):
            keys = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
            fits = [(k, v) for k, v in keys if rest == k.value or rest.startswith(f"{k.value}.")]
            if not fits:
                break
            k, node = max(fits, key=lambda kv: len(str(kv[0].value)))
            line, rest = k.start_mark.line, rest[len(str(k.value)) + 1 :]
        elif isinstance(node, yaml.SequenceNode):
            head, _, tail = rest.partition(".")
            if not head.isdigit() or int(head) >= len(node.value):
                break
            node, rest = node.value[int(head)], tail
            line = node.start_mark.line
        else:
            break
    return line + 1


def is_case_file(doc: Any) -> bool:
    """Whether a YAML document is a test case file (``rule:`` + ``cases:``), not a rule."""
    return isinstance(doc, dict) and "cases" in doc and "rule" in doc and "id" not in doc


def _rule_files(entry: str, base_dir: Path) -> list[Path]:
    p = Path(entry)
    p = p if p.is_absolute() else base_dir / p
    if p.is_dir():
        return sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file())
    if not p.exists():
        raise ConfigError(f"rule file {p} does not exist")
    return [p]


AnySpec = MatchRuleSpec | CorrelationSpec


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a rule comes from: ``where`` names it in messages; a rule from a file has its ``file`` and
    YAML ``node``, so each problem also names its line (``rules/x.yaml:12: rules[0] (custom.x).severity``)."""

    where: str
    raw: Any
    builtin: bool
    file: str | None = None
    node: yaml.Node | None = None

    def problem(self, rid: Any, keypath: str, message: str) -> str:
        """One problem line of this rule: location (with the line of ``keypath``), id, key path, message."""
        where = self.where
        if self.file is not None and (n := line_of(self.node, keypath)) is not None:
            where = where.replace(f"{self.file}: rules[", f"{self.file}:{n}: rules[", 1)
        label = f"{where} ({rid})" if isinstance(rid, str) else where
        return f"{label}.{keypath}: {message}"


def _spec(src: _Source, errors: list[str]) -> AnySpec | None:
    raw = src.raw
    if not isinstance(raw, dict):
        errors.append(f"{src.where}: a rule must be a mapping")
        return None
    if "logsource" in raw and "severity" not in raw and isinstance(raw.get("detection"), dict):
        # a whole Sigma rule dropped among ours: one line that says so, not one per Sigma key
        errors.append(f"{src.where}: a Sigma rule (logsource, level), not a rule of this language: convert it with "
                      f"`instantly-audit rules import {src.file or 'FILE'} --output FILE`")  # fmt: skip
        return None
    model: type[AnySpec] = CorrelationSpec if "correlation" in raw else MatchRuleSpec
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        rid = raw.get("id")
        for line in _entry_lines(validation_error_lines(err, model)):
            keypath, _, message = _sigma_hint(line).partition(": ")
            errors.append(src.problem(rid, keypath, message))
        if model is MatchRuleSpec:  # and what compiling it would say: every problem of the rule in one run
            errors.extend(src.problem(rid, p.where, p.message) for p in rule_problems(raw))
        return None


SIGMA_KEYS = {
    "level": "Sigma's level is severity here (info, low, medium, high, critical)",
    "tags": "ATT&CK techniques are attack: [T1078] here (Sigma's attack.t1078 tags)",
    "logsource": "the events a rule reads are chosen by types: [...] (event type globs) here",
    "timeframe": "a window is a correlation's timespan here (correlation: {type: event_count, ...})",
    "generate": "a rule a correlation uses alerts on its own unless it has enabled: false (Sigma's generate)",
    "name": "a correlation names the rules it uses by their id here",
}
"""Sigma rule keys that a YAML rule spells otherwise: an unknown-key line says how, instead of a
"did you mean" that guesses by spelling (``tags`` → ``status``). ``rules import`` converts whole Sigma rules."""


def _entry_lines(lines: list[str]) -> list[str]:
    """A correlation entry is a rule id or a mapping: pydantic reports a bad mapping under both members of the
    union (``rules.0.str: Input should be a valid string`` and ``rules.0.EntrySpec.<key>: …``). Keep the
    mapping's lines, without the member's name, and the string line only for an entry that is neither."""
    mapped = {line.split(".EntrySpec.", 1)[0] for line in lines if ".EntrySpec." in line}
    out = []
    for line in lines:
        at, sep, rest = line.partition(".str: ")
        if sep and at in mapped and rest.startswith("Input should be a valid string"):
            continue
        out.append(line.replace(".EntrySpec.", ".", 1))
    return out


def _sigma_hint(line: str) -> str:
    key, sep, rest = line.partition(": ")
    if sep and key in SIGMA_KEYS and rest.startswith("unknown key"):
        return f"{key}: unknown key ({SIGMA_KEYS[key]}; `instantly-audit rules import` converts a Sigma rule)"
    return line


def _type_typos(spec: AnySpec, catalog: tuple[str, ...]) -> list[RuleSyntaxError]:
    """The ``types``/``resolve_types`` patterns of a rule (and of its correlation's inline entries) that
    match no event type of the loaded packs' catalog (:func:`~pipeline.rules.reach.unknown_types`)."""
    if isinstance(spec, MatchRuleSpec):
        return [*unknown_types(spec.types, "types", catalog),
                *unknown_types(spec.resolve_types or (), "resolve_types", catalog)]  # fmt: skip
    return [p for i, e in enumerate(spec.correlation.rules) if isinstance(e, EntrySpec)
            for p in unknown_types(e.types or (), f"correlation.rules.{i}.types", catalog)]  # fmt: skip


_SEVERITIES = ("info", "low", "medium", "high", "critical")
_STATUSES = ("experimental", "test", "stable", "deprecated")


def meta_problems(meta: RuleMeta) -> list[str]:
    """What is wrong with a Python rule's :class:`RuleMeta` (``<field>: <problem>``): a dataclass checks no
    value, and an invalid id, severity or ATT&CK id loaded and made every alert of the rule fail Alert v1."""
    out: list[str] = []
    if not re.fullmatch(RULE_ID_PATTERN, str(meta.id)):
        out.append(f"id: {meta.id!r} is not a dotted lower-case rule id (like acme.night_export)")
    if meta.severity not in _SEVERITIES:
        out.append(f"severity: {meta.severity!r} is not one of {', '.join(_SEVERITIES)}")
    if meta.status not in _STATUSES:
        out.append(f"status: {meta.status!r} is not one of {', '.join(_STATUSES)}")
    if type(meta.version) is not int or meta.version < 1:
        out.append(f"version: {meta.version!r} is not a whole number of 1 or more")
    out += [f"attack: {a!r} is not an ATT&CK technique id (like T1078 or T1556.006)"
            for a in meta.attack if not re.fullmatch(ATTACK_PATTERN, str(a))]  # fmt: skip
    if not meta.title:
        out.append("title: empty")
    return out


# ---- loading ---------------------------------------------------------------------------------
def parse_rules_config(
    raw: Mapping[str, Any] | None, *, base_dir: Path | None = None, packs: tuple[RulePack, ...] | None = None
) -> RuleSet:
    """Validate the ``rules`` section and compile every rule: the installed rule packs' Python and
    YAML rules (``packs``, default: every registered pack), then the user's files and inline rules.

    Raises:
        ConfigError: one line per problem, each naming its key path.
    """
    raw = dict(raw or {})
    errors: list[str] = []
    reserved = {k: v for k, v in raw.items() if k in RESERVED}
    blocks = {k: v for k, v in raw.items() if k not in RESERVED}
    try:
        settings = RulesSettings.model_validate(reserved)
    except ValidationError as err:
        errors.extend(f"rules.{line}" for line in validation_error_lines(err, RulesSettings))
        settings = RulesSettings()  # go on with defaults to report the rule blocks' problems too
    settings_ok = not errors

    # YAML rules: the shipped catalog, then files, then inline.
    specs: list[tuple[AnySpec, str, bool]] = []
    sources: list[_Source] = []
    located: dict[str, _Source] = {}
    packs = rule_packs() if packs is None else packs
    for pack in packs:
        for f in pack.yaml_files:
            sources.extend(_Source(w, r, True, str(f), n) for w, r, n in _docs_in(f))
    for i, entry in enumerate(settings.files):
        try:
            for f in _rule_files(entry, base_dir or Path.cwd()):
                sources.extend(_Source(f"rules.files.{i}: {w}", r, False, str(f), n) for w, r, n in _docs_in(f))
        except ConfigError as err:
            errors.append(f"rules.files.{i}: {err.message}")
    sources.extend(_Source(f"rules.custom.{i}", r, False) for i, r in enumerate(settings.custom))
    for src in sources:
        located[src.where] = src
        spec = _spec(src, errors)
        if spec is not None:
            specs.append((spec, src.where, src.builtin))
    catalogs = [p.event_types for p in packs if p.event_types is not None]
    if catalogs:  # (no loaded pack declares its types: nothing to check against)
        catalog = tuple(dict.fromkeys(t for c in catalogs for t in c))
        for spec, where, _ in specs:
            errors.extend(located[where].problem(spec.id, p.where, p.message) for p in _type_typos(spec, catalog))

    python: dict[str, type[CatalogRule[Any]]] = {}
    for pack in packs:
        for cls in pack.rules:
            if cls.meta.id in python and python[cls.meta.id] is not cls:
                errors.append(f"rule packs: rule id {cls.meta.id!r} is defined twice (pack {pack.name!r})")
            errors += [f"rule packs: {pack.name}: {cls.__name__}.meta.{p}" for p in meta_problems(cls.meta)]
            python[cls.meta.id] = cls
    known: dict[str, str] = {rid: "built-in" for rid in python}
    for spec, where, _ in specs:
        if spec.id in known:
            errors.append(f"{where}.id: rule id {spec.id!r} is already used by {known[spec.id]}")
        else:
            known[spec.id] = where

    for key, block in blocks.items():
        if key not in known and settings_ok:  # (custom rules are unknown when files/custom failed)
            hint = difflib.get_close_matches(key, [*known, *RESERVED], n=1)
            what = "unknown rule" if "." in key else "unknown key"
            tip = f" (did you mean '{hint[0]}'?)" if hint else f" (keys: {', '.join(RESERVED)}, or a rule id)"
            errors.append(f"rules.{key}: {what}{tip}")
        elif block is not None and not isinstance(block, dict):
            errors.append(f"rules.{key}: must be a mapping of options (enabled, severity, suppress_secs, ...)")

    def params(model: type[RuleParams], rid: str, enabled: bool) -> RuleParams | None:
        block = blocks.get(rid) or {}
        if not isinstance(block, dict):
            return None
        try:
            return model.model_validate({"enabled": enabled, **block})
        except ValidationError as err:
            errors.extend(f"rules.{rid}.{line}" for line in validation_error_lines(err, model))
            return None

    rules: list[Rule] = []
    lists = shared_lists(settings)
    refs = {s.id: s for s, where, _ in specs if isinstance(s, MatchRuleSpec) and known.get(s.id) == where}
    for rid, cls in python.items():
        p = params(cls.Params, rid, settings.defaults.enabled)
        if p is not None:
            rules.append(cls(p, lists))
    for spec, where, builtin in specs:
        if known.get(spec.id) != where:
            continue
        p = params(RuleParams, spec.id, spec.enabled and (settings.defaults.enabled or not builtin))
        if p is None:
            continue
        try:
            if isinstance(spec, CorrelationSpec):
                rules.append(compile_correlation(spec, p, refs))
            else:
                rules.append(compile_rule(spec, p))
        except RuleSyntaxError as err:
            errors.extend(located[where].problem(spec.id, p.where, p.message) for p in err.problems)
    if errors:
        raise ConfigError("\n".join(errors))
    pack_ids = frozenset([*python, *(s.id for s, where, b in specs if b and known.get(s.id) == where)])
    return RuleSet(tuple(sorted(rules, key=lambda r: r.meta.id)), settings, lists, pack_ids)
