"""The CLI's promises: one exit-code contract, configs checked without secrets, relative paths
anchored at the config file, a default config path, JSON output and shell completion."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.instantly.config import workspaces
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main
from pipeline.config.loader import load_config, resolve_nothing, resolve_under
from pipeline.config.model import SqliteBusConfig

CONFIG = """\
bus: {type: sqlite, path: data/bus.db}
workspaces:
  acme:
    api_key: ${INSTANTLY_KEY}
sinks:
  archive: {type: jsonl, path: out/events.jsonl}
  siem: {type: splunk_hec, url: "https://splunk.example:8088", token: "${HEC_TOKEN}"}
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def test_exit_codes_are_one_contract() -> None:
    """0 ok, 1 findings/failed run, 2 usage, 3 could not run to the end, 130 interrupted, 143 terminated."""
    assert [int(e) for e in Exit] == [0, 1, 2, 3, 130, 143]


def test_no_environment_checks_structure_without_secrets(
    cfg_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``config validate --no-environment`` passes with no variable set; without it, the missing one is named."""
    monkeypatch.delenv("INSTANTLY_KEY", raising=False)
    monkeypatch.delenv("HEC_TOKEN", raising=False)
    assert main(["config", "validate", str(cfg_file), "--no-environment"]) == Exit.OK
    assert "structure only" in capsys.readouterr().out
    assert main(["config", "validate", str(cfg_file)]) == Exit.USAGE
    assert "environment variable INSTANTLY_KEY is not set" in capsys.readouterr().err


def test_no_environment_still_reports_structural_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in a nested key fails even when no secret is read, with a did-you-mean."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("path: out/events.jsonl", "pathh: out/events.jsonl"))
    assert main(["config", "validate", str(bad), "--no-environment"]) == Exit.USAGE
    assert "sinks.archive.pathh: unknown key (did you mean 'path'?)" in capsys.readouterr().err


def test_config_validate_json(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--format json`` prints one JSON document with the verdict and warnings."""
    assert main(["config", "validate", str(cfg_file), "--no-environment", "--format", "json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True and doc["environment"] is False and "1 workspace" in doc["summary"]


def test_config_validate_json_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid config with ``--format json`` still prints one JSON document, ``valid: false`` with
    one error per problem (a script reading stdout got nothing before), and exits 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("path: out/events.jsonl", "pathh: out/events.jsonl"))
    assert main(["config", "validate", str(bad), "--no-environment", "--format", "json"]) == Exit.USAGE
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["valid"] is False and doc["file"] == str(bad)
    assert doc["errors"] == ["sinks.archive.pathh: unknown key (did you mean 'path'?)"]


def test_empty_config_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty file validates (all defaults) but says nothing will be polled or delivered."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["config", "validate", str(empty)]) == Exit.OK
    err = capsys.readouterr().err
    assert "nothing will reach the bus" in err and "no sinks" in err


def test_relative_paths_are_relative_to_the_config_file(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bus.path and sink paths resolve against the config's directory, wherever the command runs."""
    monkeypatch.chdir(cfg_file.parent.parent)
    cfg = load_config(cfg_file, resolve=resolve_nothing)
    assert isinstance(cfg.bus, SqliteBusConfig)
    assert cfg.bus.path == cfg_file.parent.resolve() / "data" / "bus.db"
    assert cfg.sinks["archive"].path == str(cfg_file.parent.resolve() / "out" / "events.jsonl")  # type: ignore[attr-defined]
    assert cfg.config_dir == cfg_file.parent.resolve()


def test_commands_read_only_the_secrets_they_use(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading only ``sinks.siem``'s references needs HEC_TOKEN, not the Instantly key."""
    monkeypatch.delenv("INSTANTLY_KEY", raising=False)
    monkeypatch.setenv("HEC_TOKEN", "hec-token-value-000000000000")
    cfg = load_config(cfg_file, resolve=resolve_under(("bus",), ("sinks", "siem")))
    assert cfg.sinks["siem"].token.get_secret_value() == "hec-token-value-000000000000"  # type: ignore[attr-defined]
    assert workspaces(cfg)["acme"].api_key.get_secret_value().startswith("unresolved-")


def test_default_config_path(
    cfg_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$INSTANTLY_AUDIT_CONFIG, then ./instantly-audit.yaml; neither: one line naming both."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSTANTLY_AUDIT_CONFIG", raising=False)
    assert main(["config", "validate", "--no-environment"]) == Exit.USAGE
    assert "INSTANTLY_AUDIT_CONFIG" in capsys.readouterr().err
    monkeypatch.setenv("INSTANTLY_AUDIT_CONFIG", str(cfg_file))
    assert main(["config", "validate", "--no-environment"]) == Exit.OK
    monkeypatch.delenv("INSTANTLY_AUDIT_CONFIG")
    (tmp_path / "instantly-audit.yaml").write_text("bus: {type: sqlite}\n")
    assert main(["config", "validate"]) == Exit.OK
    assert "instantly-audit.yaml: ok" in capsys.readouterr().out


def test_check_sinks_failure_is_a_failed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unreachable sink under ``--check-sinks`` exits 1 (a failed check), not 2 (a config error)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('sinks:\n  es: {type: elasticsearch, url: "http://127.0.0.1:9"}\n')
    assert main(["config", "validate", str(cfg), "--check-sinks"]) == Exit.FINDINGS
    err = capsys.readouterr().err
    assert "sink check failed: sinks.es" in err and "config error" not in err


def test_shell_completion(capsys: pytest.CaptureFixture[str]) -> None:
    """``completion bash`` prints a script that knows the sub-commands."""
    assert main(["completion", "bash"]) == Exit.OK
    out = capsys.readouterr().out
    assert "instantly-audit" in out and "replay" in out and "config" in out


def test_log_level_flag_is_accepted(cfg_file: Path) -> None:
    """``-v`` and ``--log-level`` are global flags."""
    assert main(["-v", "config", "validate", str(cfg_file), "--no-environment"]) == Exit.OK
    assert main(["--log-level", "warning", "config", "validate", str(cfg_file), "--no-environment"]) == Exit.OK


def test_each_role_reads_only_its_own_secrets(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run --role sinks`` needs the sink token but not the Instantly key; pollers the reverse."""
    from pipeline.cli.main import role_sections

    monkeypatch.delenv("INSTANTLY_KEY", raising=False)
    monkeypatch.setenv("HEC_TOKEN", "hec-token-value-000000000000")
    sinks = load_config(cfg_file, resolve=resolve_under(*role_sections({"sinks"})))
    assert workspaces(sinks)["acme"].api_key.get_secret_value().startswith("unresolved-")
    assert ("workspaces",) in role_sections({"pollers"}) and ("workspaces",) not in role_sections({"webhook"})
    monkeypatch.setenv("INSTANTLY_KEY", "instantly-key-0000000000000000")
    monkeypatch.delenv("HEC_TOKEN")
    pollers = load_config(cfg_file, resolve=resolve_under(*role_sections({"pollers"})))
    assert workspaces(pollers)["acme"].api_key.get_secret_value() == "instantly-key-0000000000000000"
    assert pollers.sinks["siem"].token.get_secret_value().startswith("unresolved-")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus: {type: rabbit}\n", "bus: unknown type 'rabbit' (known types: sqlite, kafka)"),
        (
            "workspaces:\n  a:\n    api_key: ${K}\n    base_url: ftp://x\n",
            "workspaces.a.base_url: must be an http(s) URL",
        ),
    ],
)
def test_messages_are_in_our_words(text: str, expected: str) -> None:
    """No pydantic vocabulary ('Value error, ', 'Input tag … found using') in config errors."""
    from pipeline.config.loader import parse_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(text, env={"K": "k" * 20})
    assert expected in str(info.value)
    assert "Value error" not in str(info.value) and "Input tag" not in str(info.value)


def test_rules_commands_speak_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``rules list --format json`` and ``rules test --format json`` print one JSON document each."""
    assert main(["rules", "list", "--format", "json"]) == Exit.OK
    rules = json.loads(capsys.readouterr().out)
    assert {"id", "severity", "enabled", "attack", "status"} <= set(rules[0]) and len(rules) >= 23
    assert main(["rules", "test", "--format", "json"]) == Exit.OK
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and set(report["rules"]) == {r["id"] for r in rules}
    assert all(c["passed"] for c in report["cases"])


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.5])
def test_sigterm_while_starting_is_a_clean_stop(tmp_path: Path, delay: float) -> None:
    """SIGTERM at any moment of ``run``'s start (config load, bus open, components) exits 0, no traceback.

    The child starts with SIGTERM blocked, as a supervisor may leave it: a signal sent while the
    interpreter itself still starts (before any code of ours runs, which on a loaded machine
    takes longer than the shortest delay) stays pending until ``launch`` unblocks it.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "c.yaml"
    cfg.write_text("service: {enabled: false}\nsinks:\n  a: {type: jsonl, path: out.jsonl}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}),
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("section", "example"),
    [
        ('sinks:\n  s: {type: splunk_hec, url: "ftp://x", token: "${T}"}\n', "https://siem.example.com:8088"),
        ('sinks:\n  s: {type: elasticsearch, url: "siem:9200", index: x}\n', "https://siem.example.com:8088"),
        ('workspaces:\n  acme: {api_key: "${T}", base_url: "api.instantly.ai"}\n', "https://api.instantly.ai"),
        ("telemetry:\n  otlp: {endpoint: otel:4318}\n", "http://otel-collector:4318"),
        (
            "webhook:\n  sources:\n    crm: {path: /hooks/crm, secrets: ['${T}'], public_urls: [hooks/crm]}\n",
            "https://hooks.example.com followed by the source's path (/hooks/crm)",
        ),
    ],
)
def test_a_bad_url_error_shows_its_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, section: str, example: str
) -> None:
    """``must be an http(s) URL such as …`` shows a usable example: the sinks' one (``https://host:port``)
    looked like a credential to the output redaction and was printed as ``<redacted>``."""
    monkeypatch.setenv("T", "tok-0123456789abcdef")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(section)
    assert main(["config", "validate", str(cfg)]) == Exit.USAGE
    err = capsys.readouterr().err
    assert f"must be an http(s) URL such as {example}" in err, err
    assert "<redacted>" not in err


def test_run_logs_a_start_banner_and_a_stop_line(tmp_path: Path) -> None:
    """``run`` says at start which version runs with which roles, bus and components (as Vector's
    "Vector has started" does: the first thing to check after a deploy), and after SIGTERM that it
    stopped and how long it ran; JSON log lines (stderr is no terminal), exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline import __version__

    cfg = tmp_path / "c.yaml"
    cfg.write_text("service: {enabled: false}\nsinks:\n  archive: {type: jsonl, path: out.jsonl}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(x.get("msg") == "Pipeline running" for x in lines):
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(json.loads(line))
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    lines += [json.loads(x) for x in rest.splitlines() if x.strip()]
    assert proc.returncode == 0, lines[-5:]
    (banner,) = [x for x in lines if x["msg"] == "Pipeline running"]
    assert banner["version"] == __version__ and banner["pid"] == proc.pid and banner["level"] == "info"
    assert (banner["bus"], banner["sinks"], banner["sources"]) == ("sqlite", ["archive"], [])
    assert banner["roles"] == ["pollers", "rules", "sinks", "webhook"] and banner["component"] == "topology"
    assert lines[-1]["msg"] == "Pipeline stopped" and lines[-1]["unfinished_tasks"] == 0
    assert lines[-1]["uptime_secs"] >= 0


@pytest.mark.parametrize("flag", [["-v"], ["-vv"], ["--log-level", "DEBUG"], ["--verbose"]])
def test_a_global_flag_after_the_command_says_where_it_goes(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``instantly-audit config validate cfg.yaml -v`` said ``unrecognized arguments: -v`` only."""
    with pytest.raises(SystemExit) as info:
        main(["config", "validate", "cfg.yaml", *flag])
    assert info.value.code == Exit.USAGE
    err = capsys.readouterr().err
    assert "go before the command: instantly-audit -v COMMAND" in err, err
    with pytest.raises(SystemExit):
        main(["config", "validate", "cfg.yaml", "--bogus"])
    assert "go before the command" not in capsys.readouterr().err


def test_health_names_the_path_and_the_cause_as_a_user_sees_them(tmp_path: Path) -> None:
    """``health`` printed ``http://127.0.0.1:9464/sha256:3813715d [Errno 111] Connection refused``: the
    output redaction turned ``/healthz`` into a fingerprint, and a refused port or a server that is not
    ours (``File not found``) did not say what to check. Run as a user runs it, in a subprocess."""
    import http.server
    import os
    import socket
    import subprocess
    import sys
    import threading

    def health(port: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "health", "--port", str(port)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    r = health(free)
    assert r.returncode == Exit.FINDINGS
    assert r.stderr.strip() == (
        f"health: GET /healthz on 127.0.0.1:{free}: nothing listens there (connection refused); "
        "is `instantly-audit run` up with this service port?"
    ), r.stderr

    class NotOurs(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotOurs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = health(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == Exit.FINDINGS and "sha256:" not in r.stdout + r.stderr
    assert f"health: GET /healthz on 127.0.0.1:{server.server_address[1]}: HTTP 404" in r.stdout + r.stderr


def test_health_with_port_zero_asks_for_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``service.port: 0`` (what ``simulate --write-config`` writes) names no port to probe: ``health``
    says so in one line (exit 2) instead of probing port 0; ``--port`` probes the one given."""
    from aiohttp import web  # a real HTTP server on loopback answering /healthz

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("service: {port: 0}\n")
    (tmp_path / "empty").mkdir()
    assert main(["health", "-c", str(cfg)]) == Exit.USAGE
    err = capsys.readouterr().err
    assert f"service.port is 0 in {cfg}" in err and "'Service port open'" in err and "--port N" in err
    assert main(["health", "--port", "0"]) == Exit.USAGE
    assert "health: --port 0: give the port the running process listens on" in capsys.readouterr().err

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def serve_and_probe() -> int:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            with_config = await asyncio.to_thread(main, ["health", "-c", str(cfg), "--port", str(port)])
            # --port alone needs no config at all (none here: no $INSTANTLY_AUDIT_CONFIG, no ./instantly-audit.yaml)
            without = await asyncio.to_thread(main, ["health", "--port", str(port)])
            return max(with_config, without)
        finally:
            await runner.cleanup()

    monkeypatch.chdir(tmp_path / "empty")
    monkeypatch.delenv("INSTANTLY_AUDIT_CONFIG", raising=False)
    assert asyncio.run(serve_and_probe()) == Exit.OK
    out, err = capsys.readouterr()
    assert out.count(": ok") == 2 and "config error" not in err


UNUSED_SECRETS_CONFIG = """\
workspaces:
  acme:
    api_key: ${INSTANTLY_KEY}
    base_url: "http://127.0.0.1:9"
webhook:
  sources:
    acme:
      workspace_id: 019cc043-e2f1-7def-8b07-0aab88328dad
      secrets: ["${HOOK_SECRET}"]
sinks:
  es: {type: elasticsearch, url: "https://es.example:9200", api_key: "${ES_API_KEY}"}
"""


@pytest.mark.parametrize("command", ["check", "webhooks check", "keys rotate"])
def test_workspace_commands_do_not_read_receiver_or_sink_secrets(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check``, ``webhooks check`` and ``keys rotate`` read the workspaces' keys, never the webhook
    receiver's secret nor a sink's: with those unset they reach the API instead of a config error."""
    import connectors.instantly.check_cli as check_cli
    import connectors.instantly.keys_cli as keys_cli
    import connectors.instantly.webhooks_cli as webhooks_cli

    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text(UNUSED_SECRETS_CONFIG)
    monkeypatch.setenv("INSTANTLY_KEY", "instantly-key-0000000000000000")
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    monkeypatch.delenv("ES_API_KEY", raising=False)
    seen: list[str] = []

    class Reached(Exception):
        pass

    def reached(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(workspaces(cfg)["acme"].api_key.get_secret_value())
        raise Reached

    async def reached_async(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        return reached(cfg)

    monkeypatch.setattr(check_cli, "check_workspaces", reached_async)
    monkeypatch.setattr(webhooks_cli, "check_workspaces", reached_async)
    monkeypatch.setattr(keys_cli, "build_rotation", lambda args, cfg, **kw: reached(cfg))
    argv = {"check": ["check", "-c", str(cfg_path)], "webhooks check": ["webhooks", "check", "-c", str(cfg_path)],
            "keys rotate": ["keys", "rotate", "old", "-c", str(cfg_path)]}[command]  # fmt: skip
    with pytest.raises(Reached):
        main(argv)
    assert seen == ["instantly-key-0000000000000000"]
    assert "is not set" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "--once"], ["check"]])
def test_sigterm_in_a_command_that_runs_to_an_end_says_terminated(tmp_path: Path, command: list[str]) -> None:
    """SIGTERM while ``run --once`` / ``check`` wait on the API stops them like Ctrl-C: one line
    ``terminated``, exit 143 — not a silent death by signal (-15) with no output."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as server:  # an API that accepts the connection and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(60)
        port = server.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "service: {enabled: false}\nbus: {type: sqlite, path: data/bus.db}\n"
            f'workspaces:\n  acme: {{api_key: "${{INSTANTLY_KEY}}", base_url: "http://127.0.0.1:{port}"}}\n'
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "INSTANTLY_KEY": "k" * 32}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *command, "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = server.accept()  # the command is now inside its event loop, waiting for an answer
        with conn:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 == int(Exit.TERMINATED), err[-2000:]
    assert err.strip().splitlines()[-1] == "terminated"
    assert "Traceback" not in err


def test_a_busy_service_port_is_named(tmp_path: Path) -> None:
    """``run`` on a taken ``service.port`` says which port and which setting, in one line (exit 1) —
    not aiohttp's "error while attempting to bind on address …"."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"service: {{port: {port}}}\nsinks:\n  a: {{type: jsonl, path: out.jsonl}}\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        r = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == Exit.FINDINGS, r.stderr[-2000:]
    assert f"service port 127.0.0.1:{port} (service.port) is already in use" in r.stderr
    assert "error while attempting to bind" not in r.stderr and "Traceback" not in r.stderr


def test_a_busy_webhook_port_is_named(tmp_path: Path) -> None:
    """``run`` on a taken ``webhook.port`` names the port and the setting, as for ``service.port``: it
    said ``webhook receiver cannot listen on …: error while attempting to bind on address …``."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            "service: {port: 0}\n"
            f'webhook:\n  port: {port}\n  sources:\n    crm: {{workspace_id: ws-1, secrets: ["${{HS}}"]}}\n'
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HS": "s" * 32}
        r = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == Exit.FINDINGS, r.stderr[-2000:]
    assert f"webhook port 127.0.0.1:{port} (webhook.port) is already in use" in r.stderr, r.stderr[-2000:]
    assert "error while attempting to bind" not in r.stderr and "Traceback" not in r.stderr


def test_sigterm_in_replay_says_terminated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``replay`` takes SIGTERM as it takes Ctrl-C (it stops its scan and prints its summary), then says
    ``terminated`` and exits 143; the process's SIGTERM handler is put back afterwards."""
    import os
    import signal

    import pipeline.replay.cli as replay_cli
    from pipeline.bus.sqlite import SqliteBus

    cfg = tmp_path / "c.yaml"
    cfg.write_text("bus: {type: sqlite, path: bus.db}\n")

    async def make_bus() -> None:
        async with SqliteBus(str(tmp_path / "bus.db")):
            pass

    asyncio.run(make_bus())

    async def scan_values(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)
        yield [b"{}"]

    monkeypatch.setattr(replay_cli, "scan_values", scan_values)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["replay", "-c", str(cfg), "--format", "jsonl", "--no-progress"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "terminated"
    assert signal.getsignal(signal.SIGTERM) == before


def test_health_help_states_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """``health --help`` names exit 0, 1 and 2 (it said "0 … 1 otherwise" and exited 2 on ``service.port: 0``)."""
    with pytest.raises(SystemExit):
        main(["health", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit 0: it answered 200; 1: it did not answer" in text and "2: usage or configuration error" in text
    assert "service.port 0 with no --port" in text


def test_check_sinks_never_calls_a_sink_with_an_unread_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--no-environment --check-sinks``: a sink holding an unread reference is not built (each unread
    key named, exit 1) — no placeholder token reaches the destination, and the signed webhook sink's
    secret check does not crash on the placeholder (it raised a ValueError with a traceback)."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("UNREAD_T", "UNREAD_W"):
        monkeypatch.setenv(name, "would-be-read-only-with-the-environment")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "sinks:\n"
        f'  siem: {{type: splunk_hec, url: "{url}", token: "${{UNREAD_T}}", allow_insecure: true}}\n'
        f'  hook: {{type: webhook, url: "{url}", secret: "${{UNREAD_W}}", allow_insecure: true}}\n'
    )
    try:
        code = main(["config", "validate", str(cfg), "--no-environment", "--check-sinks"])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code == Exit.FINDINGS and seen == []
    assert "sinks.siem.token: not read" in err and "sinks.hook.secret: not read" in err
    assert "Traceback" not in err and "whsec_" not in err
