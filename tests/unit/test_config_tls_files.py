"""TLS files named in the config (webhook receiver, HTTP sinks, syslog, Kafka, Vault) are checked when
the file is loaded, so ``config validate`` rejects what ``run`` would; at run time a TLS file error
names the key path and the file, never its content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from connectors.syslog import SyslogSink, SyslogSinkConfig
from pipeline.bus.kafka_client import client_args_from_config
from pipeline.cli.exit_codes import Exit
from pipeline.cli.main import main
from pipeline.config.base import EnvValue
from pipeline.config.loader import load_config, parse_config, resolve_nothing, resolve_under
from pipeline.config.model import KafkaBusConfig
from pipeline.delivery.http import HttpSinkConfig, ssl_context
from pipeline.errors import ConfigError
from pipeline.sources.webhook.config import parse_webhook_config
from pipeline.sources.webhook.listener import listen
from tests.fakes.rsyslog import make_certs

HOOK = "hook-secret-0123456789abcdefghijklmnop"
SECRET_PEM_LINE = "MIIBsecretbodyXYZ0123456789"


def _text(**tls: str) -> str:
    """A config with a TLS file under every component that has them."""
    return f"""
webhook:
  tls: {{certfile: {tls.get("hook_cert", "nocert.pem")}, keyfile: {tls.get("hook_key", "nokey.pem")}}}
  sources:
    main: {{workspace_id: 00000000-0000-0000-0000-000000000001, secrets: "${{HOOK}}"}}
sinks:
  es:
    type: elasticsearch
    url: https://es.example:9200
    ca_file: {tls.get("es_ca", "nope.pem")}
  siem:
    type: syslog
    host: syslog.example
    port: 6514
    tls: {{cafile: {tls.get("syslog_ca", "nope.pem")}}}
bus:
  type: kafka
  bootstrap_servers: kafka.example:9093
  security: {{protocol: SSL, ssl_cafile: {tls.get("kafka_ca", "kafka/ca.pem")}}}
secret_managers:
  vault: {{url: "https://vault.example:8200", token: "${{HOOK}}", ca_file: {tls.get("vault_ca", "vault-ca.pem")}}}
"""


def _lines(path: Path, env: dict[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(path, env={"HOOK": HOOK} if env is None else env, **kw)  # type: ignore[arg-type]
    return str(ei.value).splitlines()


def test_every_missing_tls_file_is_a_validate_error_naming_key_and_absolute_path(tmp_path: Path) -> None:
    """The reviewer's files: each missing file is its own line, relative paths taken against the
    config file's directory, all reported together."""
    conf = tmp_path / "conf" / "c.yaml"
    conf.parent.mkdir()
    conf.write_text(_text())
    d = conf.parent
    assert sorted(_lines(conf)) == sorted([
        f"webhook.tls.certfile: file {d / 'nocert.pem'} does not exist",
        f"webhook.tls.keyfile: file {d / 'nokey.pem'} does not exist",
        f"sinks.es.ca_file: file {d / 'nope.pem'} does not exist",
        f"sinks.siem.tls.cafile: file {d / 'nope.pem'} does not exist",
        f"bus.security.ssl_cafile: file {d / 'kafka' / 'ca.pem'} does not exist",
        f"secret_managers.vault.ca_file: file {d / 'vault-ca.pem'} does not exist",
    ])  # fmt: skip


def test_config_validate_cli_rejects_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``config validate`` exits 2 (text and JSON) instead of ``ok``; ``--no-environment`` reads no file."""
    monkeypatch.setenv("HOOK", HOOK)
    conf = tmp_path / "c.yaml"
    conf.write_text(_text())
    assert main(["config", "validate", str(conf), "--format", "json"]) == Exit.USAGE
    doc = json.loads(capsys.readouterr().out)
    assert f"webhook.tls.certfile: file {tmp_path / 'nocert.pem'} does not exist" in doc["errors"]
    assert len(doc["errors"]) == 6
    assert main(["config", "validate", str(conf), "--no-environment"]) == Exit.OK


def test_tls_files_are_checked_with_the_other_problems(tmp_path: Path) -> None:
    """A missing TLS file, an unset variable and a typo: one error."""
    conf = tmp_path / "c.yaml"
    conf.write_text(_text().replace("port: 6514", "portt: 6514"))
    lines = _lines(conf, env={})
    assert "webhook.sources.main.secrets: environment variable HOOK is not set" in lines
    assert any(line.startswith("sinks.siem.portt: unknown key") for line in lines)
    assert f"sinks.es.ca_file: file {tmp_path / 'nope.pem'} does not exist" in lines
    assert f"webhook.tls.certfile: file {tmp_path / 'nocert.pem'} does not exist" in lines


def test_a_command_checks_only_the_files_of_the_sections_it_reads(tmp_path: Path) -> None:
    """Like secret files: ``run --role webhook`` does not need the sinks' client keys mounted."""
    conf = tmp_path / "c.yaml"
    conf.write_text(_text())
    lines = _lines(conf, resolve=resolve_under(("webhook",)))
    assert {line.split(":")[0] for line in lines} == {"webhook.tls.certfile", "webhook.tls.keyfile"}
    load_config(conf, env={}, resolve=resolve_nothing)  # structure only: no file read


def test_directory_and_special_file(tmp_path: Path) -> None:
    """A directory or a FIFO is refused with its own words."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir.pem").mkdir()
    text = "sinks:\n  es:\n    type: elasticsearch\n    url: https://es.example:9200\n    ca_file: dir.pem\n"
    text += "    client_cert_file: fifo\n"
    with pytest.raises(ConfigError) as ei:
        parse_config(text, env={}, base_dir=tmp_path)
    assert str(ei.value).splitlines() == [
        f"sinks.es.ca_file: file {tmp_path / 'dir.pem'} is a directory",
        f"sinks.es.client_cert_file: file {tmp_path / 'fifo'} is not a regular file",
    ]


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the process may not read is named as such (as root, which reads any file, the OS's
    refusal is played by ``open``)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    ca.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def refusing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.name == "ca.pem":
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing_open)
    text = "sinks:\n  es:\n    type: elasticsearch\n    url: https://es.example:9200\n    ca_file: ca.pem\n"
    with pytest.raises(ConfigError, match=r"sinks\.es\.ca_file: file .*ca\.pem is not readable"):
        parse_config(text, env={}, base_dir=tmp_path)


def test_an_unset_variable_in_a_tls_path_is_reported_once(tmp_path: Path) -> None:
    """``ca_file: ${CA}`` unset: the variable is named; its placeholder is not checked as a file."""
    text = "sinks:\n  es:\n    type: elasticsearch\n    url: https://es.example:9200\n    ca_file: ${CA}\n"
    with pytest.raises(ConfigError) as ei:
        parse_config(text, env={}, base_dir=tmp_path)
    assert str(ei.value) == "sinks.es.ca_file: environment variable CA is not set"


def test_valid_files_load_and_pem_problems_are_validate_errors(tmp_path: Path) -> None:
    """Real PEM files pass; a malformed CA, a key that does not match its certificate and an
    encrypted key are validate errors naming key and files, never quoting the content."""
    ca, cert, key = make_certs(tmp_path / "a")
    _, _, other_key = make_certs(tmp_path / "b")
    conf = tmp_path / "c.yaml"
    good = dict(hook_cert=str(cert), hook_key=str(key), es_ca=str(ca), syslog_ca=str(ca), kafka_ca=str(ca),
                vault_ca=str(ca))  # fmt: skip
    conf.write_text(_text(**good))
    cfg = load_config(conf, env={"HOOK": HOOK})
    assert cfg.webhook is not None and cfg.webhook.tls is not None
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_text(f"-----BEGIN CERTIFICATE-----\n{SECRET_PEM_LINE}\n-----END CERTIFICATE-----\n")
    conf.write_text(_text(**{**good, "hook_key": str(other_key), "es_ca": str(bad_ca)}))
    lines = _lines(conf)
    assert len(lines) == 2
    assert lines[0].startswith(f"sinks.es.ca_file: cannot load {bad_ca} (")
    assert lines[1].startswith(f"webhook.tls.certfile/keyfile: cannot load {cert}, {other_key} (KEY_VALUES_MISMATCH")
    assert all(SECRET_PEM_LINE not in line for line in lines)


def test_vault_ca_file_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``secret_managers.vault.ca_file: vault-ca.pem`` is found next to the config, from any directory."""
    ca, cert, key = make_certs(tmp_path / "pki")
    shutil.copy(ca, tmp_path / "vault-ca.pem")
    conf = tmp_path / "c.yaml"
    conf.write_text(_text(hook_cert=str(cert), hook_key=str(key), es_ca=str(ca), syslog_ca=str(ca),
                          kafka_ca=str(ca)))  # fmt: skip
    monkeypatch.chdir(tmp_path / "pki")
    cfg = load_config(conf, env={"HOOK": HOOK})
    assert cfg.secret_managers["vault"]["ca_file"] == str(tmp_path / "vault-ca.pem")


# ------------------------------------------------------------------------ at run time (files gone since)
def test_http_sink_context_names_the_key_and_file(tmp_path: Path) -> None:
    """Elasticsearch/Splunk/webhook sinks: ``sinks.<id>.ca_file: file … does not exist``."""
    cfg = HttpSinkConfig.model_validate({"type": "elasticsearch", "url": "https://es.example:9200",
                                         "ca_file": str(tmp_path / "gone.pem")})  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        ssl_context(cfg, "sinks.es")
    assert str(ei.value) == f"sinks.es.ca_file: file {tmp_path / 'gone.pem'} does not exist"


def test_syslog_context_names_the_key_and_file(tmp_path: Path) -> None:
    """Syslog: ``sinks.<id>.tls.cafile`` (was ``sinks.<id>.tls: cannot load certificates (FileNotFoundError)``)."""
    cfg = SyslogSinkConfig.model_validate({"type": "syslog", "host": "127.0.0.1", "port": 6514,
                                           "tls": {"cafile": str(tmp_path / "gone.pem")}})  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        SyslogSink("siem", cfg)
    assert str(ei.value) == f"sinks.siem.tls.cafile: file {tmp_path / 'gone.pem'} does not exist"


def test_syslog_mismatched_pair_at_run_time(tmp_path: Path) -> None:
    """A pair that fails to load names both fields and files, and the reason."""
    _, cert, _ = make_certs(tmp_path / "a")
    _, _, other_key = make_certs(tmp_path / "b")
    cfg = SyslogSinkConfig.model_validate({"type": "syslog", "host": "127.0.0.1", "port": 6514,
                                           "tls": {"certfile": str(cert), "keyfile": str(other_key)}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"^sinks\.siem\.tls\.certfile/keyfile: cannot load .*KEY_VALUES_MISMATCH"):
        SyslogSink("siem", cfg)


async def test_webhook_listener_names_the_key_and_file(tmp_path: Path) -> None:
    """The receiver: a ConfigError naming ``webhook.tls.certfile`` (was a bare FileNotFoundError, exit 1)."""
    from aiohttp import web

    cfg = parse_webhook_config({"tls": {"certfile": str(tmp_path / "nocert.pem"), "keyfile": str(tmp_path / "k")},
                                "sources": {"main": {"workspace_id": "00000000-0000-0000-0000-000000000001",
                                                     "secrets": EnvValue(HOOK)}}})  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        await listen(web.Application(), cfg)
    assert str(ei.value).splitlines() == [
        f"webhook.tls.certfile: file {tmp_path / 'nocert.pem'} does not exist",
        f"webhook.tls.keyfile: file {tmp_path / 'k'} does not exist",
    ]


def test_kafka_client_args_name_the_key_and_file(tmp_path: Path) -> None:
    """Kafka: ``bus.security.ssl_cafile: file … does not exist``."""
    security = {"protocol": "SSL", "ssl_cafile": str(tmp_path / "ca.pem")}
    cfg = KafkaBusConfig.model_validate({"type": "kafka", "bootstrap_servers": "k:9093", "security": security})
    with pytest.raises(ConfigError) as ei:
        client_args_from_config(cfg)
    assert str(ei.value) == f"bus.security.ssl_cafile: file {tmp_path / 'ca.pem'} does not exist"
