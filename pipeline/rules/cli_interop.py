"""``instantly-audit rules export|import|coverage``: Sigma out and in, ATT&CK Navigator layer.

* ``rules export --format sigma --output DIR [--rules FILE] [--include-disabled]`` — one
  ``<rule_id>.yml`` per expressible enabled rule (:func:`~pipeline.rules.sigma.sigma_filename`;
  correlations under ``correlations/``), plus
  ``README.md`` (field mapping, file → rule id, skipped rules and why: disabled rules are skipped
  unless ``--include-disabled``), and the pySigma field mapping pipelines for our ECS and Splunk outputs
  (``instantly_ecs.yaml``, ``instantly_splunk.yaml``: :mod:`pipeline.rules.sigma_fieldmap`);
* ``rules import FILE... [--output FILE] [--prefix P]`` — Sigma rules → our YAML rules (stdout
  or FILE); each rejected rule is named on stderr with the reason;
* ``rules coverage --navigator FILE [--rules FILE] [--emulations DIR]`` — the layer of the
  techniques with a passing emulation (:mod:`pipeline.rules.navigator`).

``--rules FILE`` is read exactly as ``rules test|list`` read it. Exit codes: 0 done, 1 some
rule rejected (import), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.yaml_load import safe_load_all
from pipeline.errors import ConfigError
from pipeline.rules.config import parse_rules_config
from pipeline.rules.correlation import CorrelationSpec
from pipeline.rules.navigator import build_layer, read_emulations
from pipeline.rules.packs import rule_packs
from pipeline.rules.rules_file import EXIT_FAIL, EXIT_OK, EXIT_USAGE, add_rules_file_arg, read_rules_file
from pipeline.rules.sigma import FIELD_NOTE, dump_sigma, export_rule, sigma_filename
from pipeline.rules.sigma_correlation import export_correlation, import_collection
from pipeline.rules.sigma_fieldmap import TARGETS, header_notes, shipped_pipelines


def cmd_export(args: argparse.Namespace) -> int:
    """Write every expressible rule as a Sigma rule file under ``args.output``."""
    try:
        section, base = read_rules_file(args.rules)
        ruleset = parse_rules_config(section, base_dir=base)
    except ConfigError as err:
        print(f"rules export: {err}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"rules export: cannot create {out} ({err.strerror})", file=sys.stderr)
        return EXIT_USAGE
    written, skipped = [], []
    written_files: dict[str, str] = {}
    by_id = {r.meta.id: r for r in ruleset.rules}
    disabled = 0
    for rule in ruleset.rules:
        if not rule.params.enabled and not args.include_disabled:
            # Sigma has no "disabled": written out, the rule would read as in use (status: stable)
            skipped.append((rule.meta.id, "disabled in this configuration (--include-disabled exports it)"))
            disabled += 1
            continue
        if isinstance(getattr(rule, "spec", None), CorrelationSpec):
            ex = export_correlation(rule, by_id)
        else:
            ex = export_rule(rule)
        if ex.document is None:
            skipped.append((ex.rule_id, ex.skipped))
            continue
        header = f"# instantly-audit rule {ex.rule_id}, exported as Sigma.\n" + "".join(
            f"# {line}\n" for line in textwrap.wrap(f"{FIELD_NOTE} {PIPELINES_NOTE}", 98)
        )
        if not rule.params.enabled:  # --include-disabled: say so where a reader looks
            ex.document["description"] = f"{ex.document['description']} Disabled in the exporting configuration."
        docs = [ex.document, *ex.base]
        text = dump_sigma(docs)
        name = sigma_filename(ex.rule_id)
        if "correlation" in ex.document:  # apart, so that DIR/*.yml is what a backend without correlations converts
            name = f"{CORRELATIONS_DIR}/{name}"
        if name in written_files:
            print(f"rules export: {ex.rule_id} and {written_files[name]} both map to {name}", file=sys.stderr)
            return EXIT_USAGE
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(header + text, encoding="utf-8")
        written.append(ex.rule_id)
        written_files[name] = ex.rule_id
    removed = _remove_stale(out, set(written_files))
    lines = ["# instantly-audit rules as Sigma", "", FIELD_NOTE, "", f"Exported: {len(written)} rules.", ""]
    lines += [f"- `{name}`: `{rid}`" for name, rid in written_files.items()] + [""]
    if skipped:
        lines += ["Skipped (disabled, or not expressible as a Sigma rule):", ""]
        lines += [f"- `{rid}`: {why}" for rid, why in skipped] + [""]
    lines += _write_pipelines(out)
    (out / "README.md").write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    print(f"rules export: {len(written)} Sigma rules written to {out}; {len(skipped)} skipped, {disabled} of them "
          "disabled (see README.md)")  # fmt: skip
    for rid, why in skipped:
        print(f"  skipped {rid}: {why}")
    for name in removed:
        print(f"  removed {name} (an earlier export's; not written now)")
    return EXIT_OK


EXPORT_HEADER = re.compile(r"# instantly-audit rule \S+, exported as Sigma\.\n")
"""The first line of every rule file the export writes (and how a file is known as one)."""


def _remove_stale(out: Path, written: set[str]) -> list[str]:
    """Delete the rule files an earlier export wrote in ``out`` that this one did not (a rule since disabled,
    removed or moved under ``correlations/``): ``sigma convert DIR`` would read them as rules in use. Only
    files starting with the export's header line are touched. Returns their names, relative to ``out``."""
    removed = []
    for path in sorted([*out.glob("*.yml"), *(out / CORRELATIONS_DIR).glob("*.yml")]):
        name = path.relative_to(out).as_posix()
        if name in written:
            continue
        try:
            with path.open(encoding="utf-8") as fh:
                first = fh.readline()
        except (OSError, UnicodeDecodeError):
            continue
        if EXPORT_HEADER.fullmatch(first):
            path.unlink()
            removed.append(name)
    return removed


PIPELINES_NOTE = (
    "For our own outputs use instantly_ecs.yaml or instantly_splunk.yaml in the export directory (see README.md)."
)

CORRELATIONS_DIR = "correlations"
"""Where correlation files go under the export directory: Lucene (``sigma convert -t lucene``) converts no
correlation and sigma-cli stops at the first one, so ``DIR/*.yml`` holds the single-event rules alone."""


def _write_pipelines(out: Path) -> list[str]:
    """Write the shipped pySigma pipelines (:mod:`pipeline.rules.sigma_fieldmap`) to ``out``; their README lines."""
    lines = ["## Field mapping pipelines", "",
             "pySigma processing pipelines renaming the Event v1 fields to where our sinks put them, for rules "
             "with `logsource.product: instantly`:", ""]  # fmt: skip
    texts = shipped_pipelines()
    for target in TARGETS:
        (out / target.file).write_text(texts[target.file], encoding="utf-8")
        lines.append(f"- `{target.file}`: {target.title}. `{target.usage}`")
    lines += ["", f"Correlations are under `{CORRELATIONS_DIR}/`: Lucene converts none (sigma-cli stops at the first "
                  "one, converting nothing), so its command takes `DIR/*.yml`; give a directory (`DIR`) only to a "
                  "backend that converts every correlation in it (the Splunk backend has no `temporal_ordered`, "
                  "ES|QL no `aliases`), else convert the correlation files one by one."]  # fmt: skip
    for target in TARGETS:
        notes = header_notes(texts[target.file])
        if notes:
            lines += ["", f"`{target.file}` leaves unmapped (a rule using them finds nothing there as is) or maps "
                          "with a caveat:", ""]  # fmt: skip
            lines += [f"- {note}" for note in notes]
    return [*lines, ""]


def cmd_import(args: argparse.Namespace) -> int:
    """Convert Sigma rule files to our YAML rules; reject, with the reason, what does not map."""
    collection: list[tuple[str, Any]] = []
    rejected = 0
    for name in args.files:
        try:
            docs = [d for d in safe_load_all(Path(name).read_text(encoding="utf-8")) if d is not None]
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            print(f"rules import: {name}: cannot read ({type(err).__name__})", file=sys.stderr)
            return EXIT_USAGE
        actions = sorted({str(d["action"]) for d in docs if isinstance(d, dict) and "action" in d})
        if actions:  # its documents only mean something merged (global, reset, repeat): none alone
            print(f"rules import: {name}: rejected: a Sigma collection file (action: {', '.join(actions)}) is not "
                  f"supported; none of its {len(docs)} documents is imported", file=sys.stderr)  # fmt: skip
            rejected += 1
            continue
        collection += [(name if len(docs) == 1 else f"{name}#{i}", doc) for i, doc in enumerate(docs)]
    accepted: list[dict[str, Any]] = []
    for where, rule, message in import_collection(collection, prefix=args.prefix):
        print(f"rules import: {where}: {message}", file=sys.stderr)
        if rule is not None:
            accepted.append(rule)
        rejected += message.startswith("rejected")
    text = yaml.safe_dump({"rules": accepted}, sort_keys=False, width=100, allow_unicode=True)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_FAIL if rejected else EXIT_OK


def cmd_coverage(args: argparse.Namespace) -> int:
    """Write the Navigator layer; list the claimed techniques left out for lack of an emulation."""
    try:
        section, base = read_rules_file(args.rules)
        ruleset = parse_rules_config(section, base_dir=base)
        dirs = [Path(d) for d in args.emulations] if args.emulations else [
            p.emulations_dir for p in rule_packs() if p.emulations_dir is not None]  # fmt: skip
        cov = build_layer(ruleset.rules, read_emulations(dirs))
    except ConfigError as err:
        print(f"rules coverage: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        Path(args.navigator).write_text(json.dumps(cov.layer, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        print(f"rules coverage: cannot write {args.navigator} ({err.strerror})", file=sys.stderr)
        return EXIT_USAGE
    print(f"rules coverage: {len(cov.proven)} techniques in the layer {args.navigator}")
    for tech, rules in sorted(cov.unproven.items()):
        print(f"  not in the layer (no passing emulation): {tech} ({', '.join(rules)})")
    for why in cov.ignored:
        print(f"  emulation ignored: {why}")
    return EXIT_OK


def register_interop(sub: Any) -> None:
    """Add ``export``, ``import`` and ``coverage`` to the ``rules`` subcommands."""
    ex = sub.add_parser(
        "export", help="export the rules as Sigma rules, one file each",
        description="Write every rule expressible in Sigma to DIR (README.md lists the rest).",
    )  # fmt: skip
    ex.add_argument("--format", choices=["sigma"], required=True, help="output format")
    ex.add_argument("--output", metavar="DIR", required=True, help="directory to write the rule files to")
    add_rules_file_arg(ex)
    ex.add_argument("--include-disabled", action="store_true",
                    help="also export the rules the configuration disables (skipped by default)")  # fmt: skip
    ex.set_defaults(func=cmd_export)
    im = sub.add_parser(
        "import", help="convert Sigma rules whose fields are Event v1 paths",
        description="Convert Sigma rule files to instantly-audit YAML rules; reject the rest.",
    )  # fmt: skip
    im.add_argument("files", metavar="FILE", nargs="+", help="Sigma rule files (YAML, one or more documents)")
    im.add_argument("--output", metavar="FILE", help="write the rules file here (default: stdout)")
    im.add_argument("--prefix", default="sigma", help="rule id prefix (default: sigma)")
    im.set_defaults(func=cmd_import)
    cov = sub.add_parser("coverage", help="write an ATT&CK Navigator layer of the emulated techniques",
                         description="Write a Navigator layer (format 4.5) of the techniques whose rules have a "
                                     "passing emulation.")  # fmt: skip
    cov.add_argument("--navigator", metavar="FILE", required=True, help="the layer file to write (JSON)")
    add_rules_file_arg(cov)
    cov.add_argument("--emulations", metavar="DIR", action="append",
                     help="emulation scenario directory (default: the installed rule packs')")  # fmt: skip
    cov.set_defaults(func=cmd_coverage)
