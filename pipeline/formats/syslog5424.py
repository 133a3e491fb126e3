"""RFC 5424 syslog messages and RFC 6587 / RFC 5425 octet-counted framing.

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID param="value" ...] MSG``

* PRI = facility * 8 + severity (facility 13 ``log_audit`` by default in the sink).
* Header fields are PRINTUSASCII (33-126) with RFC length limits (HOSTNAME 255, APP-NAME 48,
  PROCID 128, MSGID 32); ``-`` is the nil value. Dynamic values are sanitised (bytes
  outside the range become ``_``) and cut; :func:`check_header_field` rejects bad config.
* SD-PARAM values escape ``"``, ``\\`` and ``]`` with a backslash (RFC 5424 §6.3.3);
  SD-IDs and PARAM-NAMEs are 1-32 PRINTUSASCII without ``=``, space, ``]`` or ``"``.
* MSG is UTF-8; with ``bom=True`` it starts with the BOM as RFC 5424 §6.4 asks for a
  UTF-8 MSG. rsyslog keeps a BOM in its ``msg`` property (JSON and CEF parsing there then
  fail) and many CEF collectors expect the message to begin with ``CEF:``, so the sink
  leaves the BOM off by default (the MSG is then RFC 5424's MSG-ANY).
* :func:`frame` prefixes ``MSG-LEN SP`` (octet counting, RFC 6587 §3.4.1 / RFC 5425 §4.3),
  so a message may contain any byte, including LF, without breaking the stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "log_audit": 13, "log_alert": 14,
    "clock": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
SEVERITIES: dict[str, int] = {
    "emergency": 0, "alert": 1, "critical": 2, "error": 3, "warning": 4, "notice": 5,
    "informational": 6, "debug": 7,
}  # fmt: skip
NIL = "-"
BOM = b"\xef\xbb\xbf"
LIMITS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_SD_NAME = re.compile(r"^[\x21-\x7e]{1,32}$")
_SD_NAME_FORBIDDEN = re.compile(r'[= \]"]')
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII)
"""RFC 3339 as events carry it; ASCII digits only (a bare ``\\d`` would take any Unicode digit)."""


@dataclass(frozen=True, slots=True)
class SDElement:
    """One STRUCTURED-DATA element: ``[id name="value" ...]``; params keep their order."""

    id: str
    params: Sequence[tuple[str, str]] = field(default_factory=tuple)


def pri(facility: int, severity: int) -> int:
    """PRI value = facility * 8 + severity.

    Raises:
        ValueError: facility outside 0-23 or severity outside 0-7.
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0-23, got {facility}")
    if not 0 <= severity <= 7:
        raise ValueError(f"syslog severity must be 0-7, got {severity}")
    return facility * 8 + severity


def check_header_field(name: str, value: str) -> str:
    """Validate a configured header field (HOSTNAME, APP-NAME, PROCID, MSGID).

    Raises:
        ValueError: empty, too long, or not printable US-ASCII.
    """
    limit = LIMITS[name]
    if not value or len(value) > limit or _NOT_PRINTUSASCII.search(value):
        raise ValueError(f"{name} must be 1-{limit} printable US-ASCII characters without spaces")
    return value


def header_field(name: str, value: str | None) -> str:
    """Sanitise a dynamic header field: nil for empty, ``_`` for bytes outside 33-126, cut to the limit."""
    if not value:
        return NIL
    return _NOT_PRINTUSASCII.sub("_", value)[: LIMITS[name]]


def check_sd_name(value: str) -> str:
    """Validate an SD-ID or PARAM-NAME (``instantly@32473``, ``id``).

    Raises:
        ValueError: not 1-32 printable US-ASCII, or contains ``=``, space, ``]`` or ``"``.
    """
    if not _SD_NAME.match(value) or _SD_NAME_FORBIDDEN.search(value):
        raise ValueError(f"SD name {value!r} must be 1-32 printable US-ASCII without '=', ' ', ']' or '\"'")
    return value


def escape_param_value(value: str) -> str:
    """Escape an SD-PARAM value: ``\\`` → ``\\\\``, ``"`` → ``\\"``, ``]`` → ``\\]``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(elements: Sequence[SDElement]) -> str:
    """Render STRUCTURED-DATA (``-`` when there is none).

    Raises:
        ValueError: an SD-ID or PARAM-NAME is invalid.
    """
    if not elements:
        return NIL
    out = []
    for element in elements:
        params = "".join(f' {check_sd_name(k)}="{escape_param_value(v)}"' for k, v in element.params)
        out.append(f"[{check_sd_name(element.id)}{params}]")
    return "".join(out)


def timestamp(value: float | str | None) -> str:
    """An RFC 5424 TIMESTAMP from epoch seconds or RFC 3339 text (``-`` when unknown).

    RFC 3339 text is put in RFC 5424's stricter form (§6.2.3): upper-case ``T`` and ``Z`` and
    at most 6 fractional digits (more are truncated, not rounded); other text, an impossible date
    or time, or a leap second becomes ``-``.
    """
    if value is None:
        return NIL
    if isinstance(value, str):
        m = _TIMESTAMP.match(value)
        if m is None:
            return NIL
        day, clock, frac, zone = m.groups()
        try:  # a real date and time, no leap second (RFC 5424 §6.2.3.1: "MUST NOT be used")
            datetime.fromisoformat(f"{day}T{clock}")
        except ValueError:
            return NIL
        if zone[0] in "+-" and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
            return NIL
        return f"{day}T{clock}{'.' + frac[:6] if frac else ''}{zone.upper()}"
    dt = datetime.fromtimestamp(value, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}Z"


def format_message(
    *,
    facility: int,
    severity: int,
    msg: bytes | str,
    time: float | str | None = None,
    hostname: str | None = None,
    app_name: str | None = None,
    procid: str | None = None,
    msgid: str | None = None,
    sd: Sequence[SDElement] = (),
    bom: bool = False,
) -> bytes:
    """Build one RFC 5424 SYSLOG-MSG (without framing).

    Raises:
        ValueError: facility/severity out of range, or an invalid SD name.
    """
    head = " ".join(
        (
            f"<{pri(facility, severity)}>1",
            timestamp(time),
            header_field("hostname", hostname),
            header_field("app_name", app_name),
            header_field("procid", procid),
            header_field("msgid", msgid),
            structured_data(sd),
        )
    )
    body = msg.encode("utf-8") if isinstance(msg, str) else msg
    if bom and not body.startswith(BOM):
        body = BOM + body
    return head.encode("utf-8") + b" " + body if body else head.encode("utf-8")


def frame(message: bytes) -> bytes:
    """Octet-counting frame: ``MSG-LEN SP SYSLOG-MSG`` (RFC 6587 §3.4.1, RFC 5425 §4.3)."""
    return b"%d %s" % (len(message), message)


def sd_element(sd_id: str, params: Mapping[str, str | None]) -> SDElement:
    """An SD element from a mapping, leaving out ``None``/empty values."""
    return SDElement(sd_id, tuple((k, v) for k, v in params.items() if v))
