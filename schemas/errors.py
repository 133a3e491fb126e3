"""The one error the record codec raises for a record that is not what it claims to be."""

from __future__ import annotations

import msgspec


class RecordError(ValueError):
    """A record is not JSON, not an object, of another schema, or has fields missing or mistyped.

    A ``ValueError``, so callers that treated a bad record as a ``ValueError`` keep working.
    """


def decode_error(what: str, err: Exception) -> RecordError:
    """The :class:`RecordError` for a msgspec decode error: ``not JSON (…)`` or ``not <what>: <field error>``."""
    if isinstance(err, msgspec.ValidationError):
        return RecordError(f"not {what}: {err}")
    return RecordError(f"not JSON ({err})")
