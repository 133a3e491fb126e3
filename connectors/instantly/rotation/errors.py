"""The one error of ``keys rotate``: the rotation cannot go on safely."""

from __future__ import annotations

from pipeline.errors import PipelineError


class RotationError(PipelineError):
    """The rotation cannot go on safely; the message says what to do."""
