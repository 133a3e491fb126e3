"""Reading ``--rules FILE`` the same way for every ``rules`` subcommand, and their exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.cli.exit_codes import Exit
from pipeline.config.yaml_keys import repeated_key
from pipeline.config.yaml_load import safe_load
from pipeline.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = Exit.OK, Exit.FINDINGS, Exit.USAGE


def is_pipeline_config(data: dict[str, Any]) -> bool:
    """Whether ``data`` (a YAML mapping) is a pipeline config rather than a bare rules section."""
    from pipeline.config.model import RUNTIME_KEYS
    from pipeline.registry import config_sections

    sections = RUNTIME_KEYS | set(config_sections())
    return any(k in sections for k in data)


RULES_FILE_HELP = "rules config (a config file or its rules section)"


def add_rules_file_arg(parser: Any, help: str = RULES_FILE_HELP) -> None:
    """``--rules FILE`` (also ``-c``/``--config``, as every other command names its config)."""
    parser.add_argument("--rules", "--config", "-c", dest="rules", metavar="FILE", help=help)


def read_rules_file(path: str | None) -> tuple[dict[str, Any], Path | None]:
    """The rules section from ``--rules FILE`` and the directory to resolve its paths against.

    Raises:
        ConfigError: the file is unreadable, not YAML, or not a mapping.
    """
    if path is None:
        return {}, None
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = safe_load(text)  # first: it reports nesting too deep
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and (repeated := repeated_key(node)) is not None:
            raise ConfigError(f"--rules {p}: not valid YAML at {repeated}")
    except OSError as err:
        raise ConfigError(f"--rules {p}: cannot read ({err.strerror or type(err).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--rules {p}: not valid YAML ({type(err).__name__})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--rules {p}: must be a mapping (a config file or its rules section)")
    # A rules section never has a "rules" key nor a pipeline section's (its keys are settings and
    # dotted rule ids): a file with either is a pipeline config, its rules section empty when absent.
    section = (data.get("rules") or {}) if is_pipeline_config(data) else data
    if not isinstance(section, dict):
        raise ConfigError(f"--rules {p}: the rules section must be a mapping")
    return section, p.resolve().parent
