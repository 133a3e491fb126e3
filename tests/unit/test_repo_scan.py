"""``check --repo``: planted keys are found in files and git history, reported by location and fingerprint only."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
from pathlib import Path

import jsonschema
import pytest

from connectors.instantly import repo_scan
from connectors.instantly.key_shape import instantly_key_shape
from connectors.instantly.posture.cross_reference import cross_reference
from connectors.instantly.repo_scan import (
    InstantlyKeyAssignmentDetector,
    RepoSettings,
    check_repository,
    is_ci_file,
    is_secret_file,
    literal_secret,
)
from pipeline.checks.report import CheckResult, Resource
from pipeline.cli.main import main
from schemas.ids import fingerprint_secret

SARIF_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "sarif-2.1.0.json").read_text())
# Planted keys: the shape of Instantly keys in public examples (base64 of "<uuid>:<token>") and a plain literal.
SHAPED_KEY = base64.b64encode(b"019cc043-e2f1-7def-8b07-0aab88328dad:Ab3dEf6hIj9k").decode()
HISTORY_KEY = base64.b64encode(b"019d1111-aaaa-7bbb-8ccc-0123456789ab:HistOry42xyz").decode()
LITERAL_KEY = "live-4f9a8c2e71d3b6a05e9dQz"
CI_KEY = "ci-7Hq2Lm9Xw4Zr8Tb1Nk6Pv3"
AWS_KEY = "AKIAZ3MQ7R4XW2PLK5TB"
PLANTED = (SHAPED_KEY, HISTORY_KEY, LITERAL_KEY, CI_KEY, AWS_KEY)
GOOD_GITIGNORE = ".env\n.env.*\n*.key\n"


def git(repo: Path, *args: str) -> str:
    """Run git in a throwaway repository (identity and signing set per call, nothing global)."""
    cmd = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false",
           "-c", "init.defaultBranch=main", "-C", str(repo), *args]  # fmt: skip
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def write(repo: Path, rel: str, text: str) -> None:
    """Create a file (and its directories)."""
    p = repo / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def commit_all(repo: Path, message: str) -> str:
    """Stage everything not ignored and commit; return the commit id."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty git repository with a .gitignore covering .env, .env.* and *.key."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    write(r, ".gitignore", GOOD_GITIGNORE)
    write(r, "README.md", "# demo\n")
    commit_all(r, "init")
    return r


def by(results: list[CheckResult], check_id: str, status: str = "fail") -> list[CheckResult]:
    """Results of one check with one status."""
    return [r for r in results if r.check_id == check_id and r.status == status]


def test_clean_repository_passes(repo: Path) -> None:
    """A repository without secrets passes every repository check."""
    results = check_repository(repo)
    assert {(r.check_id, r.status) for r in results} == {
        ("repo.instantly_key_committed", "pass"), ("repo.secret_committed", "pass"),
        ("repo.ci_secret", "pass"), ("repo.secret_files_ignored", "pass"),
    }  # fmt: skip


def test_finds_a_key_shaped_string_in_a_file(repo: Path) -> None:
    """A committed Instantly-shaped key is a critical failure at its file and line, with its fingerprint."""
    write(repo, "src/settings.py", f"DEBUG = True\nCLIENT_TOKEN = '{SHAPED_KEY}'\n")
    commit_all(repo, "settings")
    (hit,) = by(check_repository(repo), "repo.instantly_key_committed")
    assert hit.severity == "critical"
    assert hit.location is not None and (hit.location.path, hit.location.line) == ("src/settings.py", 2)
    assert hit.fingerprint == fingerprint_secret(SHAPED_KEY)
    assert SHAPED_KEY not in repr(hit.to_dict())


def test_finds_an_assignment_to_an_instantly_key_name(repo: Path) -> None:
    """A literal assigned to INSTANTLY_API_KEY in an untracked, un-ignored file is found (and the file flagged)."""
    write(repo, "deploy/prod.env.sh", f'export INSTANTLY_API_KEY="{LITERAL_KEY}"\n')
    write(repo, "config/.env.production.bak", "x=1\n")
    (hit,) = by(check_repository(repo), "repo.instantly_key_committed")
    assert hit.location is not None and hit.location.path == "deploy/prod.env.sh"
    assert hit.attributes["detector"] == "Instantly API key assignment"


def test_finds_a_key_only_in_history(repo: Path) -> None:
    """A key committed once and deleted later is reported with the commit that introduced it."""
    write(repo, "old/integration.cfg", f"[instantly]\ninstantly_api_key = {HISTORY_KEY}\n")
    first = commit_all(repo, "add integration")
    (repo / "old" / "integration.cfg").unlink()
    commit_all(repo, "remove integration")
    hits = by(check_repository(repo), "repo.instantly_key_committed")
    assert [(h.location.path, h.location.line, h.location.commit) for h in hits if h.location] == [
        ("old/integration.cfg", 2, first)
    ]
    assert "history" in hits[0].message
    assert by(check_repository(repo, RepoSettings(history=False)), "repo.instantly_key_committed") == []


def test_finds_a_key_in_another_branch_and_a_stash(repo: Path) -> None:
    """History covers every ref: other branches and stashes too."""
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, "feature.txt", f"token: {SHAPED_KEY}\n")
    commit_all(repo, "feature")
    git(repo, "checkout", "-q", "main")
    write(repo, "README.md", f"# demo\nINSTANTLY_API_KEY={LITERAL_KEY}\n")
    git(repo, "stash", "-q")
    fps = {h.fingerprint for h in by(check_repository(repo), "repo.instantly_key_committed")}
    assert fps == {fingerprint_secret(SHAPED_KEY), fingerprint_secret(LITERAL_KEY)}


def test_ci_files_with_references_pass_and_literals_fail(repo: Path) -> None:
    """A CI secret reference is fine; a literal key in a workflow fails repo.ci_secret (critical for Instantly keys)."""
    write(repo, ".github/workflows/ok.yml", "env:\n  INSTANTLY_API_KEY: ${{ secrets.INSTANTLY_API_KEY }}\n")
    commit_all(repo, "ci")
    assert by(check_repository(repo), "repo.ci_secret") == []
    write(repo, ".github/workflows/bad.yml", f"env:\n  INSTANTLY_API_KEY: {CI_KEY}\n")
    commit_all(repo, "bad ci")
    (hit,) = by(check_repository(repo), "repo.ci_secret")
    assert hit.severity == "critical" and hit.location is not None
    assert (hit.location.path, hit.location.line) == (".github/workflows/bad.yml", 2)


def test_placeholders_and_references_are_not_keys(repo: Path) -> None:
    """Env references, file paths, placeholders and allowlisted lines are not reported."""
    write(repo, "app.yaml", "instantly_api_key: ${INSTANTLY_API_KEY}\ninstantly_api_key_file: /run/secrets/k\n"
                            "INSTANTLY_API_KEY: your_api_key_here\n")  # fmt: skip
    write(repo, "app.py", "instantly_api_key = os.environ['INSTANTLY_API_KEY']\n"
                          f"INSTANTLY_API_KEY = '{LITERAL_KEY}'  # pragma: allowlist secret\n")  # fmt: skip
    commit_all(repo, "refs")
    assert by(check_repository(repo), "repo.instantly_key_committed") == []


def test_other_secrets_come_from_detect_secrets(repo: Path) -> None:
    """detect-secrets' own detectors (here AWS) report other committed secrets as repo.secret_committed."""
    write(repo, "infra/aws.ini", f"aws_access_key_id = {AWS_KEY}\n")
    commit_all(repo, "aws")
    hits = by(check_repository(repo), "repo.secret_committed")
    assert any(h.attributes["detector"] == "AWS Access Key" and h.severity == "medium" for h in hits)


def test_gitignore_must_cover_secret_files(tmp_path: Path) -> None:
    """Without ignore rules for .env/.env.*/*.key the check fails, naming the missing patterns."""
    r = tmp_path / "bare"
    r.mkdir()
    git(r, "init", "-q")
    write(r, ".gitignore", "*.pyc\n")
    commit_all(r, "init")
    (hit,) = by(check_repository(r), "repo.secret_files_ignored")
    assert hit.attributes["missing_patterns"] == [".env", ".env.*", "*.key"] and hit.severity == "medium"


def test_tracked_and_unignored_env_files_fail(repo: Path) -> None:
    """A committed .env file and an un-ignored key file fail; an ignored .env is neither flagged nor scanned."""
    write(repo, ".env", f"INSTANTLY_API_KEY={LITERAL_KEY}\n")  # ignored: stays local, not scanned
    write(repo, "config/.env.example", "INSTANTLY_API_KEY=\n")  # a template: allowed
    git(repo, "add", "-f", "config/.env.example")
    write(repo, "certs/server.pem", "not really a key\n")
    git(repo, "add", "certs/server.pem")
    git(repo, "commit", "-q", "-m", "files")
    write(repo, "secrets/dev.key", "local\n")  # ignored by *.key
    results = check_repository(repo)
    flagged = sorted(r.location.path for r in by(results, "repo.secret_files_ignored") if r.location)
    assert flagged == ["certs/server.pem"]
    assert by(results, "repo.instantly_key_committed") == []


def test_not_a_git_repository_still_scans_files(tmp_path: Path) -> None:
    """Outside git the ignore check warns and the files are still scanned."""
    write(tmp_path, "plain/config.toml", f'instantly_api_key = "{LITERAL_KEY}"\n')
    results = check_repository(tmp_path / "plain")
    assert [r.status for r in results if r.check_id == "repo.secret_files_ignored"] == ["warn"]
    assert len(by(results, "repo.instantly_key_committed")) == 1


def test_history_is_scanned_in_bounded_batches(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """History blobs are read batch by batch; a cap on blobs scanned is reported as a warning."""
    monkeypatch.setattr(repo_scan, "HISTORY_BATCH_BLOBS", 1)
    for i, key in enumerate((SHAPED_KEY, HISTORY_KEY)):
        write(repo, f"gone{i}.txt", f"instantly_token = {key}\n")
        commit_all(repo, f"add {i}")
        (repo / f"gone{i}.txt").unlink()
        commit_all(repo, f"rm {i}")
    fps = {h.fingerprint for h in by(check_repository(repo), "repo.instantly_key_committed")}
    assert fps == {fingerprint_secret(SHAPED_KEY), fingerprint_secret(HISTORY_KEY)}
    capped = check_repository(repo, RepoSettings(max_history_blobs=1))
    assert len(by(capped, "repo.instantly_key_committed")) == 1
    assert any("max_history_blobs" in r.message for r in by(capped, "repo.instantly_key_committed", "warn"))


def test_exclude_globs_skip_paths(repo: Path) -> None:
    """check.repo.exclude leaves matching paths out of the scan (working tree and history)."""
    write(repo, "tests/fixtures/key.txt", f"{SHAPED_KEY}\n")
    commit_all(repo, "fixture")
    assert by(check_repository(repo, RepoSettings(exclude=["tests/fixtures/*"])), "repo.instantly_key_committed") == []


@pytest.mark.parametrize("fmt", ["table", "json", "sarif"])
def test_cli_never_prints_planted_keys(
    repo: Path, fmt: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Canary: `check --repo` finds every planted key, exits 1, and no output or log line contains one."""
    caplog.set_level(logging.DEBUG)
    write(repo, "old.cfg", f"instantly_api_key = {HISTORY_KEY}\n")
    commit_all(repo, "old")
    (repo / "old.cfg").unlink()
    commit_all(repo, "rm")
    write(repo, "src/a.py", f"KEY = '{SHAPED_KEY}'\nINSTANTLY_API_KEY = '{LITERAL_KEY}'\n")
    write(repo, ".gitlab-ci.yml", f"variables:\n  INSTANTLY_TOKEN: {CI_KEY}\n")
    write(repo, "aws.ini", f"aws_access_key_id = {AWS_KEY}\n")
    commit_all(repo, "keys")
    out_file = repo.parent / f"report.{fmt}"
    code = main(["check", "--repo", str(repo), "--format", fmt, "-o", str(out_file)])
    out, err = capsys.readouterr()
    written = out_file.read_text()
    assert code == 1
    for key in PLANTED:
        assert fingerprint_secret(key) in written
        for text in (out, err, written, caplog.text):
            assert key not in text
    if fmt == "sarif":
        jsonschema.validate(json.loads(written), SARIF_SCHEMA, cls=jsonschema.Draft4Validator)


def test_committed_live_key_is_escalated() -> None:
    """A committed key whose fingerprint matches a live API key is marked critical and names the live key."""
    fp = fingerprint_secret(LITERAL_KEY)
    committed = CheckResult("repo.secret_committed", "t", "c", "medium", "fail", "Secret Keyword", "repo .",
                            fingerprint=fp)  # fmt: skip
    (r,) = cross_reference([committed], {fp: ("acme", Resource("api_key", "k1", "zapier"))})
    assert r.severity == "critical" and "LIVE key zapier (k1) of workspace acme" in r.message


def test_detectors() -> None:
    """The Instantly detectors accept real-looking keys and reject references and placeholders."""
    assert instantly_key_shape(SHAPED_KEY)
    assert not instantly_key_shape(base64.b64encode(b"not-a-uuid:token123").decode())
    assert literal_secret(LITERAL_KEY)
    for v in ("${INSTANTLY_API_KEY}", "os.environ.get", "your_api_key_here", "changeme", "abc", "<redacted>"):
        assert not literal_secret(v)
    d = InstantlyKeyAssignmentDetector()
    found = [list(d.analyze_string(line)) for line in (
        f'export INSTANTLY_API_KEY="{LITERAL_KEY}"',
        f'  "instantlyApiKey": "{LITERAL_KEY}",',
        f"ENV INSTANTLY_TOKEN={LITERAL_KEY}",
        "INSTANTLY_API_KEY: ${{ secrets.INSTANTLY_API_KEY }}",
        "instantly_api_key_file: /run/secrets/instantly",
    )]  # fmt: skip
    assert found == [[LITERAL_KEY], [LITERAL_KEY], [LITERAL_KEY], [], []]
    assert is_ci_file(".github/workflows/x.yml") and is_ci_file("Dockerfile") and not is_ci_file("src/ci.py")
    assert is_secret_file("a/.env") and is_secret_file(".env.prod") and not is_secret_file(".env.example")
