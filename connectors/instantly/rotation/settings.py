"""The ``rotation`` config section: the admin key, the journal directory, timings, and where each key lives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline.config.base import Model, Secret


class KeyRotationConfig(Model):
    """``rotation.keys.<NAME>``: where one key lives."""

    workspace: str | None = None
    destination: str | dict[str, Any]
    scopes: list[str] | None = None
    admin_api_key: Secret | None = None


class RotationSettings(Model):
    """The ``rotation`` config section."""

    admin_api_key: Secret | None = None
    journal_dir: Path = Path("data/rotation")
    grace_period_secs: float = Field(900.0, ge=0, le=30 * 86_400)
    verify_attempts: int = Field(5, ge=1, le=50)
    verify_delay_secs: float = Field(2.0, ge=0, le=300)
    keys: dict[str, KeyRotationConfig] = Field(default_factory=dict)
