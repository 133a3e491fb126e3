"""The ``redaction`` config section and teaching the redaction what a loaded config holds.

.. code-block:: yaml

    redaction:
      url_path_hosts: [hooks.example.com, "*.internal.example"]   # paths there are not secret

:func:`pipeline.config.loader.teach_redaction` runs when a config file is loaded (every command):
it registers every secret value the config holds (:func:`secret_values`: each ``Secret`` field,
sink credentials included) and sets the URL host allowlist.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator

from pipeline.config.base import Model
from pipeline.redaction.urls import validate_hosts


class RedactionConfig(Model):
    """``redaction``: what the publish gate may leave readable."""

    url_path_hosts: list[str] = Field(
        default_factory=list,
        description="hosts whose URL paths are not secret (kept readable); everywhere else a path is fingerprinted",
    )

    @field_validator("url_path_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return validate_hosts(v)


def secret_values(node: Any) -> list[str]:
    """Every ``SecretStr`` value inside a model, a dict or a list."""
    out: list[str] = []
    if isinstance(node, SecretStr):
        out.append(node.get_secret_value())
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            out += secret_values(getattr(node, name))
    elif isinstance(node, dict):
        for v in node.values():
            out += secret_values(v)
    elif isinstance(node, list | tuple):
        for v in node:
            out += secret_values(v)
    return out
