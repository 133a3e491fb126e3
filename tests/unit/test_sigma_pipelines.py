"""The pySigma field mapping pipelines ``rules export --format sigma`` writes for our ECS and Splunk outputs.

Each shipped rule, converted with a pipeline by pySigma 2.0.1, must name fields that hold, in the
document our formatter makes of each of its test case events, the value the rule's Event v1 field has
there; a field a pipeline leaves as it is must be one its header names as unmapped. The shipped files
are what :mod:`pipeline.rules.sigma_fieldmap` derives from every record the pipeline can produce
(regenerate them with ``PYTHONPATH=. python -m tests.unit.test_sigma_pipelines``).
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sigma.backends.test.backend import TextQueryTestBackend
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule

from pipeline.cli.main import main
from pipeline.rules.sigma_fieldmap import TARGETS, Target, build_pipelines, header_notes, shipped_pipelines
from tests.event_corpus import rule_case_events, sigma_mapping_corpus

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "pipeline" / "rules" / "sigma_pipelines"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sigma")
    assert main(["rules", "export", "--format", "sigma", "--output", str(out)]) == 0
    return out


def test_shipped_pipelines_are_what_the_formatters_give() -> None:
    """pipeline/rules/sigma_pipelines/ holds exactly what the mapping derived from the formatters gives for
    every record the pipeline can produce (regenerate: ``python -m tests.unit.test_sigma_pipelines``)."""
    assert build_pipelines(sigma_mapping_corpus()) == shipped_pipelines()


def test_export_writes_the_pipelines(exported: Path) -> None:
    """The export writes both pipelines beside the rules (pySigma loads them), README.md says how to use
    them and lists what each leaves unmapped; each rule file's header points to them."""
    readme = (exported / "README.md").read_text(encoding="utf-8")
    shipped = shipped_pipelines()
    for target in TARGETS:
        text = (exported / target.file).read_text(encoding="utf-8")
        assert text == shipped[target.file]
        ProcessingPipeline.from_yaml(text)
        assert f"`{target.file}`: {target.title}. `{target.usage}`" in readme
        for note in header_notes(text):
            assert f"- {note}" in readme
    assert "Unmapped: target.id:" in readme and "sigma convert -t splunk -p DIR/instantly_splunk.yaml DIR" in readme
    assert "instantly_ecs.yaml or instantly_splunk.yaml" in (exported / "api_key_all_scope.yml").read_text("utf-8")


def _walk(node: Any, out: list[str]) -> None:
    if isinstance(node, SigmaDetection):
        for item in node.detection_items:
            _walk(item, out)
    elif isinstance(node, SigmaDetectionItem) and node.field is not None:
        out.append(node.field)


def _fields(rule: SigmaRule | SigmaCorrelationRule) -> list[str]:
    """Every field name a rule uses, in a fixed order (so the names before and after a pipeline pair up)."""
    out = list(rule.fields)
    if isinstance(rule, SigmaRule):
        for name in sorted(rule.detection.detections):
            _walk(rule.detection.detections[name], out)
    else:
        aliases = rule.aliases.aliases
        for g in rule.group_by or []:  # an alias names no field: the fields it maps each rule's events to do
            out += [aliases[g].mapping[r] for r in sorted(aliases[g].mapping, key=str)] if g in aliases else [g]
        ref = getattr(rule.condition, "fieldref", None)
        out += ref if isinstance(ref, list) else [ref] if isinstance(ref, str) else []
    return out


def _renamed(text: str, pipeline_text: str) -> list[tuple[str, str]]:
    """(Event v1 field, field after the pipeline) for every field the rules of a file use."""
    before = SigmaCollection.from_yaml(text)
    after = SigmaCollection.from_yaml(text)
    pipeline = ProcessingPipeline.from_yaml(pipeline_text)
    pairs = []
    for old, new in zip(before.rules, after.rules, strict=True):
        pipeline.apply(new)
        names, mapped = _fields(old), _fields(new)
        assert len(names) == len(mapped), (old.title, names, mapped)
        pairs += list(zip(names, mapped, strict=True))
    return pairs


def _leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of each non-object value below ``node``."""
    out: list[tuple[str, Any]] = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        out += _leaves(v, f"{path}.") if isinstance(v, dict) else [(path, v)]
    return out


def _native(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _documented(field: str, notes: list[str]) -> bool:
    for note in notes:
        m = re.match(r"Unmapped: (\S+):", note)
        if m and (m.group(1) == field or (m.group(1).endswith(".<name>") and field.startswith(m.group(1)[:-6]))):
            return True
    return False


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_every_mapped_field_of_every_exported_rule_holds_its_value(exported: Path, target: Target) -> None:
    """pySigma 2.0.1 applies the pipeline to every exported rule (correlations included); each field it
    renames holds, in the document ``target``'s formatter makes of each of the rule's case events, exactly
    the value the Event v1 field has (absent where the field is; a documented caveat excepted), and each
    field it leaves alone is one the pipeline's header names as unmapped."""
    pipeline_text = (exported / target.file).read_text(encoding="utf-8")
    notes = header_notes(pipeline_text)
    caveats = {m.group(1) for n in notes if (m := re.match(r"Caveat: (\S+):", n))}
    cases = rule_case_events()
    held = 0
    for f in sorted(exported.rglob("*.yml")):
        rule_id = re.match(r"# instantly-audit rule (\S+),", f.read_text(encoding="utf-8"))
        assert rule_id is not None
        events = [e.to_dict() for e in cases[rule_id.group(1)]]
        for old, new in _renamed(f.read_text(encoding="utf-8"), pipeline_text):
            if old == new:
                assert _documented(old, notes), (f.name, old)
                continue
            for ev in events:
                want = _native(ev, old)
                got = target.fields(target.render(ev)).get(new)
                if want is None:
                    assert got is None or old in caveats, (f.name, old, new, ev["type"], got)
                    continue
                if isinstance(want, dict):  # an object field (a rule's ``fields``): its leaves sit below ``new``
                    doc = target.fields(target.render(ev))
                    for sub, leaf in _leaves(want):
                        got = doc.get(f"{new}.{sub}")
                        assert got == (leaf if isinstance(leaf, list) else [leaf]), (f.name, old, new, sub, got)
                    held += 1
                    continue
                assert got == (want if isinstance(want, list) else [want]), (f.name, old, new, ev["type"], got)
                held += 1
    assert held >= 100


class _NoCorrelationBackend(TextQueryTestBackend):
    """A text backend that converts no correlation rule, as pySigma-backend-elasticsearch's Lucene backend
    (``-t lucene``): sigma-cli then stops on the first correlation it is given, converting nothing."""

    correlation_methods: ClassVar[dict[str, str]] = None  # type: ignore[assignment]


# sigma-cli targets whose backend converts correlations (Splunk does; Lucene does not)
CORRELATING_TARGETS = {"splunk": True, "lucene": False}


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_the_documented_convert_command_converts_the_export(exported: Path, target: Target) -> None:
    """Each pipeline's documented command (README.md, its header, docs/rules.md), given the export as sigma-cli
    reads its inputs (the shell expands a glob, a directory is searched for ``**/*.yml``), converts every rule
    it names with a backend like the target's: Lucene converts no correlation, so the command must leave the
    correlations out (they are under ``correlations/``) and still reach every single-event rule."""
    argv = shlex.split(target.usage.replace("DIR", str(exported)))
    assert argv[:2] == ["sigma", "convert"] and argv[2] == "-t" and argv[4] == "-p", argv
    backend_name, pipeline_file, inputs = argv[3], argv[5], argv[6:]
    paths: list[str] = []
    for arg in inputs:
        paths += sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
    files = sorted(SigmaCollection.resolve_paths(paths))  # type: ignore[arg-type]
    coll = SigmaCollection.load_ruleset(files)  # type: ignore[arg-type]
    pipeline = ProcessingPipeline.from_yaml(Path(pipeline_file).read_text(encoding="utf-8"))
    correlates = CORRELATING_TARGETS[backend_name]
    backend = (TextQueryTestBackend if correlates else _NoCorrelationBackend)(processing_pipeline=pipeline)
    queries = backend.convert(coll)
    readme = (exported / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^- `([a-z0-9_/]+\.yml)`: `([^`]+)`$", readme, flags=re.M))
    corr_files = {name for name in listed if name.startswith("correlations/")}
    assert len(corr_files) >= 3, listed
    reached = {str(f.relative_to(exported)) for f in files}
    want = set(listed) if correlates else set(listed) - corr_files
    assert reached == want, (backend_name, reached ^ want)
    assert len(queries) >= len(want)


def test_the_index_templates_map_every_field_the_ecs_pipeline_targets() -> None:
    """The shipped Elasticsearch and OpenSearch templates are ``dynamic: false``: a field they do not map is
    not searchable. Every destination of instantly_ecs.yaml is mapped (under ``instantly.details`` by its
    ``flattened`` / ``flat_object`` mapping)."""
    import yaml

    doc = yaml.safe_load(shipped_pipelines()["instantly_ecs.yaml"])
    dests = [d for item in doc["transformations"] for d in item["mapping"].values()]
    assert "labels.event_type" in dests and any(d.startswith("instantly.details.") for d in dests)
    for flavour in ("elasticsearch", "opensearch"):
        path = ROOT / "deploy" / "elasticsearch" / flavour / "component-template.instantly-audit_mappings.json"
        mappings = json.loads(path.read_text(encoding="utf-8"))["template"]["mappings"]
        assert mappings["dynamic"] is False
        for dest in dests:
            node: dict[str, Any] = mappings
            for part in dest.rstrip(".").split("."):
                assert part in node.get("properties", {}), (flavour, dest)
                node = node["properties"][part]
                if node.get("type") in ("flattened", "flat_object"):
                    break
            else:
                assert "type" in node, (flavour, dest)


if __name__ == "__main__":  # regenerate the shipped pipelines
    for name, text in build_pipelines(sigma_mapping_corpus()).items():
        (SHIPPED / name).write_text(text, encoding="utf-8")
        print(f"wrote {SHIPPED / name}", file=sys.stderr)
