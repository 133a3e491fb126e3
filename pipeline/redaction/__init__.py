"""Redaction, vendor-neutral: the secret registry, the name rule, text and URL passes, the publish gate.

* :mod:`.registry` — registered secret values and connector-contributed credential shapes;
* :mod:`.text` — the value + shape pass over free text (logs, error messages, record strings);
* :mod:`.urls` — URLs reduced to scheme, host and port plus a fingerprint;
* :mod:`.gate` — the one gate every event and alert passes before it is published.

The name rule itself is part of the contracts: :mod:`schemas.secret_names`.
"""

from __future__ import annotations

from pipeline.redaction.gate import GateRejected, encode_alert, encode_event, gate_alert, gate_event, rejected_letter
from pipeline.redaction.registry import register_secret, register_shape
from pipeline.redaction.text import REDACTED, is_redacted, redact_text
from pipeline.redaction.urls import redact_url, set_url_path_hosts
from schemas.secret_names import is_secret_name

__all__ = [
    "REDACTED",
    "GateRejected",
    "encode_alert",
    "encode_event",
    "gate_alert",
    "gate_event",
    "is_redacted",
    "is_secret_name",
    "redact_text",
    "redact_url",
    "register_secret",
    "register_shape",
    "rejected_letter",
    "set_url_path_hosts",
]
