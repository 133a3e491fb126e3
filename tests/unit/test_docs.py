"""The documentation holds: README stays a short front door, every relative link resolves, and
every repository path the architecture page names exists.

A newcomer follows README to ``docs/`` and ``docs/architecture.md`` to the module of any stage
in one step; a link to a moved file or a path to a module that was split away breaks that, so
these tests fail on it instead of a reader finding out.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README_MAX_LINES = 150

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`([^`\n]+)`")
_TOP = ("pipeline/", "connectors/", "schemas/", "tests/", "deploy/", "benchmarks/", "docs/", "requirements/", ".ci/")
_BRACES = re.compile(r"\{([^{}]*)\}")


def _pages() -> list[Path]:
    return [README, *DOCS]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE.sub(r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [m.group(1) for m in _LINK.finditer(text)]


def _expand(path: str) -> list[str]:
    """``pipeline/config/{base,loader}.py`` → both paths (brace alternatives, as a shell would)."""
    m = _BRACES.search(path)
    if m is None:
        return [path]
    head, tail = path[: m.start()], path[m.end() :]
    return list(itertools.chain.from_iterable(_expand(f"{head}{alt}{tail}") for alt in m.group(1).split(",")))


def _repo_paths(page: Path) -> list[str]:
    """Every backticked token that starts with a top-level folder of the repository."""
    out: list[str] = []
    for token in _CODE.findall(page.read_text(encoding="utf-8")):
        token = token.strip()
        if token.startswith(_TOP) and " " not in token:
            out += _expand(token)
    return out


def _exists(path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def test_readme_is_a_short_front_door() -> None:
    """README fits on a screen or three and shows the two commands a newcomer needs."""
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert "make demo" in text
    assert "make test" in text
    assert "make check" in text


def test_every_docs_page_is_reachable_from_readme() -> None:
    """Following links from README reaches every page in docs/ (no orphan page)."""
    seen: set[Path] = set()
    todo = [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or not page.exists() or page.suffix != ".md":
            continue
        seen.add(page)
        for link in _links(page):
            target = link.partition("#")[0]
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                todo.append((page.parent / target).resolve())
    orphans = [p.relative_to(ROOT).as_posix() for p in DOCS if p.resolve() not in seen]
    assert not orphans, f"no link path from README.md reaches {orphans}"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link (and its #anchor, into a Markdown page) points at something that exists."""
    broken: list[str] = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        dest = (page.parent / target).resolve() if target else page.resolve()
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            broken.append(f"{link} (no {rel})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{link} (no heading #{anchor} in {rel})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_architecture_names_only_paths_that_exist() -> None:
    """Each module path in docs/architecture.md exists, so a newcomer finds every stage in one step."""
    paths = _repo_paths(ARCHITECTURE)
    assert len(paths) >= 30, "the architecture page should name the module of every stage"
    missing = sorted({p for p in paths if not _exists(p)})
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_architecture_names_every_stage() -> None:
    """The stages of the data flow each have their module on the page."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for path in (
        "connectors/instantly/source.py",
        "connectors/instantly/streams.py",
        "pipeline/sources/webhook/",
        "pipeline/bus/",
        "pipeline/rules/engine.py",
        "pipeline/rules/worker.py",
        "pipeline/delivery/runner.py",
        "pipeline/formats/",
        "pipeline/replay/",
        "pipeline/registry.py",
        "schemas/",
    ):
        assert f"`{path}`" in text, f"docs/architecture.md does not name {path}"


def test_repo_path_scanner_expands_braces_and_skips_prose() -> None:
    """The path scanner reads brace groups as a shell would and ignores backticked code that is not a path."""
    assert _expand("pipeline/config/{base,loader}.py") == ["pipeline/config/base.py", "pipeline/config/loader.py"]
    assert _slug("Rotating any Instantly key (`keys rotate`)") == "rotating-any-instantly-key-keys-rotate"
    assert _slug("The pipeline's own key") == "the-pipelines-own-key"


def test_every_yaml_block_in_the_docs_parses() -> None:
    """A config snippet copied from README or docs/ loads (``secrets: [${HOOK_SECRET}]`` did not:
    a ``{`` inside a flow list)."""
    import yaml

    blocks = 0
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            blocks += 1
            try:
                yaml.safe_load(m.group(1))
            except yaml.YAMLError as err:
                line = text[: m.start()].count("\n") + 1
                pytest.fail(f"{page.relative_to(ROOT)}:{line}: {str(err).splitlines()[0]}")
    assert blocks >= 10


def _config_examples() -> list[tuple[str, str]]:
    """Every YAML block in README or docs/ that is a pipeline config: its top-level keys are all
    config sections (``bus``, ``sinks``, ``workspaces``, …); rule files, case files and scenario
    scripts are not."""
    import yaml

    from pipeline.config.model import RUNTIME_KEYS
    from pipeline.registry import config_sections

    sections = RUNTIME_KEYS | set(config_sections())
    found = []
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            doc = yaml.safe_load(m.group(1))
            if isinstance(doc, dict) and doc and set(doc) <= sections:
                found.append((f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
    return found


@pytest.mark.parametrize(("where", "block"), [pytest.param(w, b, id=w) for w, b in _config_examples()])
def test_every_config_example_in_the_docs_validates(
    where: str, block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config snippet copied from README or docs/ passes ``config validate --no-environment`` (the
    structure, every key and value; no variable or secret file read). scaling.md's backpressure
    block was a Kafka bus without ``bootstrap_servers``, refused as it stood."""
    from pipeline.cli.main import main

    (tmp_path / "rules").mkdir()  # the examples' `files: [rules/]`
    cfg = tmp_path / "config.yaml"
    cfg.write_text(block, encoding="utf-8")
    code = main(["config", "validate", str(cfg), "--no-environment"])
    assert code == 0, f"{where}: {capsys.readouterr().err.strip()}"


def test_the_docs_hold_config_examples_of_every_sink_type() -> None:
    """docs/sinks.md shows each sink type configured (it had option tables only: a Splunk ``url``
    pasted from Splunk's docs as ``…/services/collector/event`` got a 404 on every batch)."""
    import yaml

    from pipeline.delivery.registry import sink_types

    shown = {
        sink.get("type")
        for where, block in _config_examples()
        if where.startswith("docs/sinks.md")
        for sink in (yaml.safe_load(block).get("sinks") or {}).values()
    }
    assert sorted(set(sink_types()) - shown) == []


def _case_file_examples() -> list[tuple[str, str]]:
    """Every YAML block in README or docs/ that is a case file (``rule:`` and ``cases:``)."""
    import yaml

    found = []
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            doc = yaml.safe_load(m.group(1))
            if isinstance(doc, dict) and {"rule", "cases"} <= set(doc):
                found.append((f"{page.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)))
    return found


@pytest.mark.parametrize(("where", "block"), [pytest.param(w, b, id=w) for w, b in _case_file_examples()])
def test_every_case_file_example_in_the_docs_passes_rules_test(where: str, block: str, tmp_path: Path) -> None:
    """A case file copied from the docs runs green under ``rules test`` (the rules.md example's
    unquoted ``start: 2026-01-01T00:00:00Z`` is a datetime to YAML and was refused)."""
    from pipeline.cli.main import main

    case = tmp_path / "case.yaml"
    case.write_text(block, encoding="utf-8")
    assert main(["rules", "test", str(case)]) == 0, where


def test_the_docs_hold_a_case_file_example() -> None:
    assert _case_file_examples()


def test_cli_md_names_every_command() -> None:
    """docs/cli.md's opening list names every command ``instantly-audit --help`` lists (``health`` was missing)."""
    import argparse

    from pipeline.cli.main import build_parser

    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    opening = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert sorted(c for c in sub.choices if f"`{c}`" not in opening) == []


def _shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line, body) of every fenced block that is shell (``sh``, ``bash``, ``console`` or no language),
    fences paired in order (a closing fence never opens the next block)."""
    out: list[tuple[int, str]] = []
    lang: str | None = None
    start, body = 0, list[str]()
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n, []
            else:
                if lang in ("", "sh", "bash", "console"):
                    out.append((start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def _documented_commands() -> list[tuple[str, str]]:
    """Every ``instantly-audit …`` command line in README and docs/: in a fenced shell block (one per
    line, ``\\`` continuations joined) or in inline code, up to a comment, pipe or redirection."""
    found = []
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        inline = _FENCE.sub("", text)
        for start, body in _shell_blocks(text):
            for line in body.replace("\\\n", " ").splitlines():
                if c := re.search(r"(?:^|[\s(\"'$])(?:\S*/)?instantly-audit\s+(.*)", line):
                    found.append((f"{page.relative_to(ROOT)}:{start}", c.group(1)))
        for c in re.finditer(r"`(?:\S*/)?instantly-audit ([^`]+)`", inline):
            found.append((f"{page.relative_to(ROOT)} `{c.group(1)[:40]}`", c.group(1)))
    return found


def test_every_documented_command_names_a_real_subcommand_and_flags() -> None:
    """A command copied from the docs names a command ``instantly-audit --help`` lists and only flags
    that command (or the top level) takes: a renamed flag or a retired subcommand fails here, not
    in a reader's shell. Synopsis brackets and ``a|b`` alternatives are read as their parts."""
    import argparse

    from pipeline.cli.main import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    def flags(parser: argparse.ArgumentParser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}

    top = build_parser()
    commands = _documented_commands()
    assert len(commands) >= 60
    problems = []
    for where, line in commands:
        line = re.split(r"\s#|\s\|\s|\s>|\s&&\s|;", line)[0]
        tokens = re.findall(r"[^\s\[\]|]+", line)
        if not tokens or tokens[0] in ("…", "COMMAND") or tokens[0].endswith(":"):
            continue  # prose about commands, or a quoted message (`instantly-audit replay: error: …`)
        parser, path = top, []
        for tok in tokens:
            if tok in subcommands(parser):
                parser = subcommands(parser)[tok]
                path.append(tok)
            elif re.match(r"^--?[A-Za-z]", tok):
                flag = tok.split("=")[0].rstrip(",.:)`")
                if flag not in flags(parser) | flags(top):
                    problems.append(f"{where}: `instantly-audit {' '.join(path)}` takes no {flag}")
        if not path and not tokens[0].startswith("-"):
            problems.append(f"{where}: `instantly-audit {tokens[0]}` is not a command")
    assert problems == [], "\n".join(problems)


def test_security_and_receiver_pages_agree_on_an_authenticated_bad_body() -> None:
    """docs/security.md said a bad JSON shape gets a 400; the receiver (and webhook-receiver.md)
    answer 200 ``dead_lettered``: each page's JSON-shape step says the same."""
    for name in ("security.md", "webhook-receiver.md"):
        text = (ROOT / "docs" / name).read_text(encoding="utf-8")
        [step] = re.findall(r"^\d+\. JSON shape.*?(?=^\d+\. |^$)", text, re.S | re.M)
        assert "dead_lettered" in step and "`200`" in step and "(400)" not in step, name
