"""A sink whose secret (or any value) a command does not read stays configured: ``config validate
--no-environment`` counts it, ``sinks list`` lists it, ``status`` and the pollers' backpressure
measure its consumer group. The placeholder left for the unread reference passes the checks that
only the real value can decide; the command that reads the value still checks it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import Field

from pipeline.bus.sqlite import SqliteBus
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main, role_sections
from pipeline.cli.status_cli import collect
from pipeline.config.base import is_unresolved, validate_block
from pipeline.config.loader import load_config, not_read, resolve_nothing, resolve_under
from pipeline.delivery.base import SinkConfig
from pipeline.errors import ConfigError
from pipeline.sources.backpressure import watched_groups

SLACK_URL = "https://hooks.slack.com/services/T000/B000/abcdefghijklmnop"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """\
bus: {{type: sqlite, path: {bus}, max_consumer_lag: 100}}
sinks:
  sl: {{type: slack, webhook_url: "${{UNREAD_SLK}}"}}
  hook: {{type: webhook, url: "https://hooks.example.com/in", secret: "${{UNREAD_WH}}"}}
  siem: {{type: splunk_hec, url: "${{UNREAD_HEC_URL}}", token: "${{UNREAD_T}}", batch_max_records: "${{UNREAD_N}}"}}
"""


@pytest.fixture
def cfg_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("UNREAD_SLK", "UNREAD_WH", "UNREAD_HEC_URL", "UNREAD_T", "UNREAD_N"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(bus=tmp_path / "bus.db"))
    return path


def test_validate_without_environment_counts_every_sink(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(cfg_file), "--no-environment"]) == Exit.OK
    out = capsys.readouterr()
    assert "3 sink(s)" in out.out
    assert "no sinks" not in out.err


def test_sinks_list_lists_sinks_with_unread_secrets(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sinks", "list", "-c", str(cfg_file)]) == Exit.OK
    rows = [line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()]
    assert rows == [["hook", "webhook"], ["siem", "splunk_hec"], ["sl", "slack"]]


def test_status_and_pollers_measure_every_sinks_lag(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``status`` reads only the bus's references; ``run --role pollers`` never a sink's: both see every sink."""
    monkeypatch.setenv("UNREAD_SLK", SLACK_URL)  # set, but neither command reads it
    expected = ["rules", "sink-sl", "sink-hook", "sink-siem"]
    pollers = load_config(cfg_file, resolve=resolve_under(*role_sections({"pollers"})))
    assert [g for g, _ in watched_groups(pollers)] == expected
    status_cfg = load_config(cfg_file, resolve=resolve_under(("bus",)))

    async def run() -> list[str]:
        async with SqliteBus(cfg_file.parent / "bus.db"):
            pass
        doc = await collect(status_cfg)
        return [g["group"] for g in doc["groups"]]

    assert asyncio.run(run()) == expected


def test_the_command_that_reads_the_secret_still_checks_it(cfg_file: Path) -> None:
    env = {
        "UNREAD_SLK": "not-a-url",
        "UNREAD_WH": "plain-text-secret",
        "UNREAD_HEC_URL": "splunk.example:8088",
        "UNREAD_T": "hec-token-0000000000",
        "UNREAD_N": "many",
    }
    with pytest.raises(ConfigError) as ei:
        load_config(cfg_file, env=env)
    lines = str(ei.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == [
        "sinks.hook.secret",
        "sinks.siem.batch_max_records",
        "sinks.siem.url",
        "sinks.sl.webhook_url",
    ]
    cfg = load_config(cfg_file, env={**env, "UNREAD_SLK": SLACK_URL, "UNREAD_WH": WHSEC,
                                     "UNREAD_HEC_URL": "https://splunk.example:8088", "UNREAD_N": "5"})  # fmt: skip
    assert sorted(cfg.sinks) == ["hook", "siem", "sl"]


class _Strict(SinkConfig):
    type: str = "strict"
    port: int = Field(ge=1)


def test_a_required_unread_value_is_named_never_dropped() -> None:
    """A required key no placeholder can stand in for: an error naming the key, not a lost sink."""
    with pytest.raises(ConfigError) as ei:
        validate_block(_Strict, {"type": "strict", "port": not_read("P")}, "sinks.s")
    assert str(ei.value).startswith("sinks.s.port: its value comes from a reference this command does not read")


def test_no_environment_keeps_a_sink_whose_number_is_unread(cfg_file: Path) -> None:
    """``batch_max_records: ${N}`` unread: the sink is kept, the unread value stays a placeholder."""
    cfg = load_config(cfg_file, resolve=resolve_nothing)
    assert sorted(cfg.sinks) == ["hook", "siem", "sl"]
    assert is_unresolved(cfg.sinks["siem"].batch_max_records)
    assert is_unresolved(cfg.sinks["sl"].webhook_url)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        ("workspaces:\n  acme:\n    api_key: ${K}\n    base_url: ${U}\n", "1 workspace,"),
        ("telemetry:\n  otlp:\n    endpoint: ${U}\n", "0 sink(s)"),
    ],
)
def test_an_unread_url_passes_its_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, summary: str
) -> None:
    """An http(s) URL from an unread ``${VAR}``: the section is kept (a workspace was lost before)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", "validate", str(path), "--no-environment"]) == Exit.OK
    assert summary in capsys.readouterr().out


def test_an_unread_value_that_cannot_be_kept_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Outside a sink (``service.port: ${PORT}``): one line naming the key, never an empty error."""
    path = tmp_path / "c.yaml"
    path.write_text("service:\n  port: ${PORT}\n")
    assert main(["config", "validate", str(path), "--no-environment"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "service.port: its value comes from a reference this command does not read" in err


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            'sinks:\n  siem: {type: splunk_hec, url: "https://s.example:8088", token: "${T}", tokn: "${T}"}\n',
            "sinks.siem.tokn: unknown key",
        ),
        ('sinks:\n  sl: {type: slack, webhok_url: "${SLK}"}\n', "sinks.sl.webhok_url: unknown key"),
        ("service:\n  prot: ${PORT}\n", "service.prot: unknown key"),
    ],
)
def test_an_unknown_key_is_reported_whatever_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    """A misspelt key whose value is an unread ``${VAR}`` is still an unknown key (it was hidden)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", "validate", str(path), "--no-environment"]) == Exit.USAGE
    assert line in capsys.readouterr().err
