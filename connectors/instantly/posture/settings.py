"""The ``check`` config section, its command-line overrides, and the rules tuned for a one-shot snapshot."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from connectors.instantly.repo_scan import RepoSettings
from pipeline.checks.report import FailOn
from pipeline.config.base import Model, validation_error_lines
from pipeline.errors import ConfigError
from pipeline.rules.config import RuleSet, parse_rules_config


class PostureSettings(Model):
    """The ``check`` config section (flags override it)."""

    fail_on: FailOn = "high"
    allowed_admins: list[str] = Field(default_factory=list, description="emails or domains ('*.acme.com')")
    invitation_max_age_days: float = Field(7.0, gt=0, le=3650)
    shared_key_window_days: float = Field(30.0, gt=0, le=365)
    rotation_days: float | None = Field(None, gt=0, le=3650, description="override api_key.stale.key_max_age_days")
    pipeline_key_name: str | None = None
    repo: RepoSettings = RepoSettings()

    @field_validator("allowed_admins", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            if not isinstance(item, str) or not item.strip():
                raise ValueError("entries must be non-empty strings (emails or domains)")
            out.append(item.strip().lower().rstrip(".").lstrip("@"))
        return out


def settings_from(
    section: PostureSettings | Mapping[str, Any], args: argparse.Namespace | None = None
) -> PostureSettings:
    """Validate the ``check`` section with the command-line overrides applied.

    Raises:
        ConfigError: one line per problem, each naming ``check.<key>`` (or the flag).
    """
    data: dict[str, Any] = section.model_dump() if isinstance(section, PostureSettings) else dict(section)
    if args is not None:
        overrides = {
            "fail_on": getattr(args, "fail_on", None),
            "allowed_admins": getattr(args, "allowed_admin", None),
            "invitation_max_age_days": getattr(args, "invitation_days", None),
            "rotation_days": getattr(args, "rotation_days", None),
            "pipeline_key_name": getattr(args, "pipeline_key_name", None),
        }
        data.update({k: v for k, v in overrides.items() if v is not None})
        repo = data.get("repo")
        if getattr(args, "no_history", False) and (repo is None or isinstance(repo, Mapping)):
            data["repo"] = {**(repo or {}), "history": False}
    try:
        return PostureSettings.model_validate(data)
    except ValidationError as err:
        raise ConfigError("\n".join(f"check.{line}" for line in validation_error_lines(err, PostureSettings))) from None


def build_ruleset(rules_section: Mapping[str, Any], settings: PostureSettings, base_dir: Path | None) -> RuleSet:
    """The stream's rules, tuned for a one-shot snapshot.

    Raises:
        ConfigError: the ``rules`` section is invalid.
    """
    section: dict[str, Any] = copy.deepcopy(dict(rules_section))

    def override(rule_id: str, **values: Any) -> None:
        block = section.get(rule_id)
        if block is None or isinstance(block, dict):
            section[rule_id] = {**(block or {}), **values}

    override("block_list.internal_domain_missing", settle_secs=0)
    # Reported by the check's own findings (member.admin_not_allowed, blast radius), not twice.
    override("member.privileged", enabled=False)
    override("api_key.unaudited_reach", enabled=False)
    if settings.rotation_days is not None:
        override("api_key.stale", key_max_age_days=settings.rotation_days)
    return parse_rules_config(section, base_dir=base_dir)
