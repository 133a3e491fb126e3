"""The repository half of ``instantly-audit check --repo PATH``: committed keys, secrets in CI, ignored secret files.

Checks (all grouped under the security checklist):

* ``repo.instantly_key_committed`` (critical) — an Instantly API key in the working tree or in
  any blob of the git history (every ref, including stashes);
* ``repo.secret_committed`` — any other secret found by ``detect-secrets`` (Yelp's maintained
  scanner: AWS, private keys, Slack, Stripe, GitHub, JWT, …: medium failures; its entropy and
  keyword heuristics: low warnings);
* ``repo.ci_secret`` (high) — any secret literal in CI or container build files;
* ``repo.secret_files_ignored`` — ``.env``, ``.env.*`` and ``*.key`` (and ``*.pem``) are ignored by
  git, none is tracked, none lies around un-ignored.

Instantly keys are found by two ``detect-secrets`` plugins registered here: assignments of a
literal to an ``INSTANTLY_API_KEY``-style name (any name containing ``instantly`` and ending in
key/token/secret, in shell, YAML, JSON, Python, JS, Dockerfiles, …) and the key shape seen in
Instantly's examples (base64 of ``<uuid>:<token>``; the real format is undocumented). Its
standard filters apply (``${VAR}``, templated and indirect values are not secrets; a line marked
``pragma: allowlist secret`` is skipped).

A finding names the file, the line, the commit for history findings and the secret's
fingerprint (``sha256:`` + 8 hex, the same as the pipeline's API key fingerprints) — never the
secret. Git is only read (``ls-files``, ``check-ignore``, ``rev-list``, ``cat-file``, ``log``),
with ``core.fsmonitor`` off so scanning an untrusted repository runs none of its hooks.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_file
from detect_secrets.plugins.base import BasePlugin
from detect_secrets.settings import transient_settings
from pydantic import Field

from connectors.instantly.checklist import Basic
from connectors.instantly.key_shape import B64_RUN, instantly_key_shape
from pipeline.checks.report import CheckResult, Location, Resource, Status
from pipeline.config.base import Model
from schemas.alert import Severity
from schemas.ids import fingerprint_secret

GITIGNORE_ITEM = ".env files listed in .gitignore"
_LOCK = threading.Lock()
GIT_TIMEOUT_SECS = 120.0


class RepoSettings(Model):
    """``check.repo``: what the repository scan covers."""

    history: bool = True
    exclude: list[str] = Field(default_factory=list, description="globs of repo-relative paths not to scan")
    max_file_bytes: int = Field(2_000_000, gt=0)
    max_history_blobs: int = Field(50_000, gt=0)


# ------------------------------------------------------------------------------------ detectors
_B64 = re.compile(f"({B64_RUN})")
_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?<![a-z0-9_.-])
    (?P<name>[a-z0-9_.-]*instantly[a-z0-9_.-]*?(?:api[_.-]?)?(?:key|token|secret))
    ["']?\s*(?::=|=>|=|:)\s*
    (?P<quote>["'`]?)
    (?P<value>[^\s"'`,;#\])}]+)
    """
)
_REFERENCE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)+$")
_PLACEHOLDER = re.compile(
    r"(?i)(your|example|placeholder|changeme|change_me|dummy|redacted|xxxx|\*\*\*|replace|insert)"
)


def literal_secret(value: str) -> bool:
    """Whether an assigned value looks like a real secret rather than a reference or a placeholder."""
    v = value.strip()
    if len(v) < 16 or len(set(v)) < 6 or v[0] in "$<{%@&*" or "${" in v or "{{" in v:
        return False
    if any(c in v for c in "([{") or _REFERENCE.match(v) or _PLACEHOLDER.search(v):
        return False
    return any(c.isdigit() for c in v) and any(c.isalpha() for c in v)


class InstantlyKeyAssignmentDetector(BasePlugin):
    """A literal assigned to an ``INSTANTLY_API_KEY``-style name (``instantly`` + ``key``/``token``/``secret``)."""

    secret_type = "Instantly API key assignment"  # noqa: S105 - a label, not a secret

    def analyze_string(self, string: str, **_: Any) -> Generator[str, None, None]:
        """Yield each literal value assigned to an Instantly key name on the line."""
        for m in _ASSIGNMENT.finditer(string):
            value = m.group("value")
            if literal_secret(value):
                yield value


class InstantlyKeyShapeDetector(BasePlugin):
    """A string shaped like an Instantly API key (base64 of ``<uuid>:<token>``), whatever it is assigned to."""

    secret_type = "Instantly API key"  # noqa: S105 - a label, not a secret

    def analyze_string(self, string: str, **_: Any) -> Generator[str, None, None]:
        """Yield each base64 run on the line that decodes to ``<uuid>:<token>``."""
        for m in _B64.finditer(string):
            if instantly_key_shape(m.group(1)):
                yield m.group(1)


INSTANTLY_TYPES = frozenset({InstantlyKeyAssignmentDetector.secret_type, InstantlyKeyShapeDetector.secret_type})
HEURISTIC_TYPES = frozenset({"Base64 High Entropy String", "Hex High Entropy String", "Secret Keyword"})
"""detect-secrets detectors with many false positives: reported as warnings."""
SKIPPED_PLUGINS = frozenset({"IPPublicDetector"})
"""Public IP addresses are not secrets."""


def _plugins_config() -> list[dict[str, Any]]:
    mapping: dict[str, Any] = get_mapping_from_secret_type_to_class()
    for cls in (InstantlyKeyAssignmentDetector, InstantlyKeyShapeDetector):
        mapping[cls.secret_type] = cls  # how detect-secrets registers plugins loaded from files
    return [{"name": c.__name__} for c in mapping.values() if c.__name__ not in SKIPPED_PLUGINS]


@dataclass(frozen=True, slots=True)
class SecretHit:
    """One secret found: where, what kind, and its fingerprint (the value itself is not kept)."""

    path: str
    line: int
    kind: str
    fingerprint: str
    commit: str | None = None


def scan_paths(files: Iterable[tuple[Path, str]]) -> list[SecretHit]:
    """Scan ``(file on disk, repo-relative path to report)`` pairs with detect-secrets and the Instantly plugins."""
    hits: list[SecretHit] = []
    with _LOCK, transient_settings({"plugins_used": _plugins_config()}):
        for disk, rel in files:
            seen: dict[tuple[int, str], SecretHit] = {}
            for s in scan_file(str(disk)):
                value = s.secret_value
                if not value:
                    continue
                hit = SecretHit(rel, int(s.line_number), str(s.type), fingerprint_secret(value))
                key = (hit.line, hit.fingerprint)
                old = seen.get(key)
                # One hit per secret and line: Instantly detectors win over generic ones, assignments over shapes.
                if old is None or _rank(hit.kind) > _rank(old.kind):
                    seen[key] = hit
                del value
            hits.extend(sorted(seen.values(), key=lambda h: (h.line, h.fingerprint)))
    return hits


def _rank(kind: str) -> int:
    if kind == InstantlyKeyAssignmentDetector.secret_type:
        return 3
    if kind == InstantlyKeyShapeDetector.secret_type:
        return 2
    return 0 if kind in HEURISTIC_TYPES else 1


# ------------------------------------------------------------------------------------------ git
class GitError(Exception):
    """A git command failed (the message has the command and git's first error line)."""


def _git(root: Path, *args: str, stdin: bytes | None = None, ok: Sequence[int] = (0,)) -> bytes:
    cmd = ["git", "-c", "core.fsmonitor=false", "-c", "core.quotepath=false", "-C", str(root), *args]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=GIT_TIMEOUT_SECS, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GitError(f"git {args[0]}: {type(err).__name__}") from None
    if proc.returncode not in ok:
        first = proc.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise GitError(f"git {args[0]} exited {proc.returncode}: {first[0] if first else ''}")
    return proc.stdout


def _split0(data: bytes) -> list[str]:
    return [p for p in data.decode("utf-8", "surrogateescape").split("\0") if p]


def git_root(path: Path) -> Path | None:
    """The top of the git work tree containing ``path``, or None when it is not in one."""
    try:
        out = _git(path, "rev-parse", "--show-toplevel").decode().strip()
    except GitError:
        return None
    return Path(out) if out else None


# ----------------------------------------------------------------------------------- file sets
CI_PATTERNS = (
    ".github/workflows/*", ".github/actions/*", ".gitlab-ci.yml", ".gitlab-ci.yaml", ".gitlab/*", ".circleci/*",
    "Jenkinsfile", "Jenkinsfile.*", "*/Jenkinsfile", "azure-pipelines*.yml", "azure-pipelines*.yaml",
    "bitbucket-pipelines.yml", ".travis.yml", ".drone.yml", ".buildkite/*", "cloudbuild*.yaml", "cloudbuild*.yml",
    ".ci/*", "ci/*", ".woodpecker.yml", ".woodpecker/*", "buildspec.yml", "Dockerfile", "Dockerfile.*",
    "*/Dockerfile", "*.dockerfile", "docker-compose*.yml", "docker-compose*.yaml", "compose.yml", "compose.yaml",
)  # fmt: skip
"""CI and container build files: a secret here leaks through build logs, forks and images."""
SECRET_FILE_PATTERNS = (".env", ".env.*", "*.key", "*.pem")
TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist", ".defaults", ".tmpl")
PROBES = {".env": ".env", ".env.*": ".env.production", "*.key": "instantly.key"}
"""One sample path per pattern the seed's .gitignore lists; each must be ignored."""
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache",
                       ".pytest_cache", ".hypothesis", ".tox", "dist", "build"})  # fmt: skip


def is_ci_file(rel: str) -> bool:
    """Whether a repo-relative path is a CI or container build file."""
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p + "/*") for p in CI_PATTERNS)


def is_secret_file(rel: str) -> bool:
    """Whether a path names a secret file (``.env``, ``.env.*`` but not templates, ``*.key``, ``*.pem``)."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".env.") and name.endswith(TEMPLATE_SUFFIXES):
        return False
    return any(fnmatch.fnmatch(name, p) for p in SECRET_FILE_PATTERNS)


def _excluded(rel: str, settings: RepoSettings) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in settings.exclude)


def _walk(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in sorted(filenames):
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return out


# ------------------------------------------------------------------------------------- results
_META: dict[str, tuple[str, str, Severity, str]] = {
    "repo.instantly_key_committed": (
        "Instantly API key committed to the repository", Basic.SECRETS, "critical",
        "Rotate the key now (instantly-audit keys rotate NAME), then remove it from the files and — for history\n"
        "findings — from git history (git filter-repo); read it from ${ENV}, a *_file secret or a secret manager.",
    ),
    "repo.secret_committed": (
        "Secret committed to the repository", Basic.SECRETS, "medium",
        "Revoke or rotate the secret, move it to the environment or a secret manager, and remove it from history.\n"
        "A false positive can be marked on its line with a 'pragma: allowlist secret' comment.",
    ),
    "repo.ci_secret": (
        "Secret in a CI or container build file", Basic.SECRETS, "high",
        "CI files are read by everyone with repository access and end up in build logs and images: use the CI\n"
        "system's secret store (e.g. ${{ secrets.INSTANTLY_API_KEY }}) and rotate the exposed secret.",
    ),
    "repo.secret_files_ignored": (
        ".env and key files are ignored by git", GITIGNORE_ITEM, "high",
        "Add .env, .env.* and *.key to .gitignore; untrack committed ones with 'git rm --cached FILE' and rotate\n"
        "every secret they held (they stay in history).",
    ),
}  # fmt: skip


def _result(check_id: str, target: str, status: Status, message: str, **kw: Any) -> CheckResult:
    title, checklist, severity, remediation = _META[check_id]
    sev: Severity = kw.pop("severity", severity)
    return CheckResult(check_id, title, checklist, sev, status, message, target, remediation=remediation, **kw)


def _hit_results(hits: Sequence[SecretHit], target: str) -> list[CheckResult]:
    out: list[CheckResult] = []
    for h in hits:
        where = Location(h.path, h.line, h.commit)
        res = (Resource("file", h.path, None),)
        history = " (in git history)" if h.commit else ""
        if h.kind in INSTANTLY_TYPES:
            out.append(_result("repo.instantly_key_committed", target, "fail", f"{h.kind}{history}", location=where,
                               fingerprint=h.fingerprint, resources=res, attributes={"detector": h.kind}))  # fmt: skip
        elif h.kind in HEURISTIC_TYPES:
            out.append(_result("repo.secret_committed", target, "warn", f"possible secret ({h.kind}){history}",
                               severity="low", location=where, fingerprint=h.fingerprint, resources=res,
                               attributes={"detector": h.kind}))  # fmt: skip
        else:
            out.append(_result("repo.secret_committed", target, "fail", f"{h.kind}{history}", location=where,
                               fingerprint=h.fingerprint, resources=res, attributes={"detector": h.kind}))  # fmt: skip
        if is_ci_file(h.path) and not h.commit:
            sev: Severity = "critical" if h.kind in INSTANTLY_TYPES else "high"
            out.append(_result("repo.ci_secret", target, "fail", f"{h.kind} in a CI/build file", severity=sev,
                               location=where, fingerprint=h.fingerprint, resources=res,
                               attributes={"detector": h.kind}))  # fmt: skip
    return out


def _scannable(root: Path, rel: str, settings: RepoSettings) -> bool:
    if _excluded(rel, settings):
        return False
    p = root / rel
    try:
        return p.is_file() and not p.is_symlink() and p.stat().st_size <= settings.max_file_bytes
    except OSError:
        return False


def check_repository(path: Path, settings: RepoSettings | None = None) -> list[CheckResult]:
    """Every repository check's results for ``path`` (blocking: runs git and reads files)."""
    settings = settings or RepoSettings()
    top = git_root(path)
    root = top or path.resolve()
    target = str(path)
    in_git = top is not None
    results: list[CheckResult] = []
    try:
        if in_git:
            tracked = set(_split0(_git(root, "ls-files", "-z", "--cached")))
            untracked = set(_split0(_git(root, "ls-files", "-z", "--others", "--exclude-standard")))
            files = sorted(tracked | untracked)
        else:
            tracked, untracked, files = set(), set(), _walk(root)
        results += _check_ignores(root, target, in_git, tracked, untracked, files)
        tree = [(root / rel, rel) for rel in files if _scannable(root, rel, settings)]
        hits = scan_paths(tree)
        if in_git and settings.history:
            hits += _scan_history(root, settings, hits, results, target)
    except GitError as err:
        results.append(_result("repo.instantly_key_committed", target, "error", f"git failed: {err}"))
        return results
    results += _hit_results(hits, target)
    scope = "the working tree" + (" or history" if in_git and settings.history else "")
    for check_id, ok in (
        ("repo.instantly_key_committed", f"no Instantly API key in {scope}"),
        ("repo.secret_committed", "detect-secrets found no other secret"),
        ("repo.ci_secret", "no secret in CI or container build files"),
    ):  # fmt: skip
        if not any(r.check_id == check_id and r.status in ("fail", "warn", "error") for r in results):
            results.append(_result(check_id, target, "pass", ok))
    return results


def _check_ignores(
    root: Path, target: str, in_git: bool, tracked: set[str], untracked: set[str], files: Sequence[str]
) -> list[CheckResult]:
    """``repo.secret_files_ignored``: patterns covered by .gitignore, nothing tracked, nothing un-ignored."""
    out: list[CheckResult] = []
    if not in_git:
        found = [f for f in files if is_secret_file(f)]
        msg = "not a git repository: ignore rules cannot be checked"
        if found:
            msg += f"; secret files: {', '.join(found)}"
        res = tuple(Resource("file", f, None) for f in found)
        return [_result("repo.secret_files_ignored", target, "warn", msg, resources=res)]
    for rel in sorted(tracked):
        if is_secret_file(rel):
            out.append(_result("repo.secret_files_ignored", target, "fail", f"{rel} is tracked by git (committed)",
                               location=Location(rel), resources=(Resource("file", rel, None),)))  # fmt: skip
    for rel in sorted(untracked):
        if is_secret_file(rel):
            out.append(_result("repo.secret_files_ignored", target, "fail", f"{rel} exists and is not ignored",
                               location=Location(rel), resources=(Resource("file", rel, None),)))  # fmt: skip
    probes = list(PROBES.values())
    ignored = set(_split0(_git(root, "check-ignore", "--no-index", "-z", "--stdin", stdin="\0".join(probes).encode(),
                               ok=(0, 1))))  # fmt: skip
    missing = [pattern for pattern, probe in PROBES.items() if probe not in ignored]
    if missing:
        out.append(_result("repo.secret_files_ignored", target, "fail",
                           f".gitignore does not cover {', '.join(missing)}", severity="medium",
                           location=Location(".gitignore"), attributes={"missing_patterns": missing}))  # fmt: skip
    if not out:
        out.append(_result("repo.secret_files_ignored", target, "pass",
                           ".env, .env.* and *.key are ignored and no secret file is tracked"))  # fmt: skip
    return out


HISTORY_BATCH_BYTES = 32 * 1024 * 1024
HISTORY_BATCH_BLOBS = 2000


def _batches(blobs: Sequence[tuple[str, int]]) -> Iterator[list[str]]:
    """Blob ids in groups of at most HISTORY_BATCH_BLOBS and about HISTORY_BATCH_BYTES (memory stays bounded)."""
    batch: list[str] = []
    size = 0
    for sha, n in blobs:
        if batch and (size + n > HISTORY_BATCH_BYTES or len(batch) >= HISTORY_BATCH_BLOBS):
            yield batch
            batch, size = [], 0
        batch.append(sha)
        size += n
    if batch:
        yield batch


def _scan_blobs(root: Path, shas: Sequence[str], paths: dict[str, str]) -> list[SecretHit]:
    """Write one batch of blobs under their original names (0600, in a private temp dir) and scan them.

    The hits' ``path`` is ``<blob id>\\0<repo-relative path>``.
    """
    content = _git(root, "cat-file", "--batch", stdin="\n".join(shas).encode() + b"\n")
    with tempfile.TemporaryDirectory(prefix="instantly-audit-history-") as tmp:
        files: list[tuple[Path, str]] = []
        pos = 0
        for sha in shas:
            end = content.index(b"\n", pos)
            size = int(content[pos:end].split()[2])
            data = content[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
            disk = Path(tmp) / sha / paths[sha]
            disk.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            files.append((disk, f"{sha}\0{paths[sha]}"))
        return scan_paths(files)


def _scan_history(
    root: Path, settings: RepoSettings, tree_hits: Sequence[SecretHit], results: list[CheckResult], target: str
) -> list[SecretHit]:
    """Scan every blob reachable from any ref that is not in the index; attribute hits to their first commit."""
    paths: dict[str, str] = {}
    for line in _git(root, "rev-list", "--all", "--objects").decode("utf-8", "surrogateescape").splitlines():
        sha, _, rel = line.partition(" ")
        if rel and sha not in paths and not _excluded(rel, settings):
            paths[sha] = rel
    staged = {ln.split()[1] for ln in _git(root, "ls-files", "-s").decode("utf-8", "surrogateescape").splitlines()
              if len(ln.split()) >= 2}  # fmt: skip
    candidates = [sha for sha in paths if sha not in staged]
    if not candidates:
        return []
    checks = _git(root, "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)",
                  stdin="\n".join(candidates).encode() + b"\n").decode().splitlines()  # fmt: skip
    blobs: list[tuple[str, int]] = []
    for ln in checks:
        parts = ln.split()
        if len(parts) == 3 and parts[1] == "blob" and int(parts[2]) <= settings.max_file_bytes:
            blobs.append((parts[0], int(parts[2])))
    if len(blobs) > settings.max_history_blobs:
        results.append(_result("repo.instantly_key_committed", target, "warn",
                               f"history has {len(blobs)} blobs; only the first {settings.max_history_blobs} "
                               "were scanned (check.repo.max_history_blobs)", severity="info"))  # fmt: skip
        blobs = blobs[: settings.max_history_blobs]
    found: list[SecretHit] = []
    known = {(h.path, h.fingerprint) for h in tree_hits}
    for batch in _batches(blobs):
        for h in _scan_blobs(root, batch, paths):
            sha, _, rel = h.path.partition("\0")
            if (rel, h.fingerprint) in known:
                continue
            known.add((rel, h.fingerprint))
            first = _git(root, "log", "--all", "--reverse", "--format=%H", f"--find-object={sha}").decode().split()
            found.append(SecretHit(rel, h.line, h.kind, h.fingerprint, first[0] if first else sha))
    return found
