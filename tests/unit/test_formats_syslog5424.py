"""RFC 5424 messages and octet-counted framing parse back with a strict RFC parser written here."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.formats.syslog5424 import (
    BOM,
    FACILITIES,
    SDElement,
    check_header_field,
    check_sd_name,
    format_message,
    frame,
    pri,
    timestamp,
)

_HEADER = re.compile(
    rb"^<(\d{1,3})>1 (\S+) ([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) ([\x21-\x7e]{1,32}) "
)
_SD_NAME = re.compile(rb'[^= \]"\x00-\x20\x7f-\xff]{1,32}')
_TS = re.compile(rb"^(-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2}))$")


@dataclass
class Parsed:
    """One parsed SYSLOG-MSG."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: list[tuple[str, list[tuple[str, str]]]]
    msg: bytes


def parse_5424(data: bytes) -> Parsed:
    """Strict RFC 5424 §6 parser (SD-PARAM escapes per §6.3.3)."""
    m = _HEADER.match(data)
    if m is None:
        raise ValueError(f"bad header: {data[:80]!r}")
    if not _TS.match(m.group(2)):
        raise ValueError("bad TIMESTAMP")
    i = m.end()
    sd: list[tuple[str, list[tuple[str, str]]]] = []
    if data[i : i + 1] == b"-":
        i += 1
    else:
        while data[i : i + 1] == b"[":
            nm = _SD_NAME.match(data, i + 1)
            if nm is None:
                raise ValueError("bad SD-ID")
            params: list[tuple[str, str]] = []
            i = nm.end()
            while data[i : i + 1] == b" ":
                pm = _SD_NAME.match(data, i + 1)
                if pm is None or data[pm.end() : pm.end() + 2] != b'="':
                    raise ValueError("bad SD-PARAM")
                j, value = pm.end() + 2, bytearray()
                while True:
                    c = data[j : j + 1]
                    if not c:
                        raise ValueError("unterminated PARAM-VALUE")
                    if c == b"\\" and data[j + 1 : j + 2] in (b'"', b"\\", b"]"):
                        value += data[j + 1 : j + 2]
                        j += 2
                    elif c == b'"':
                        break
                    elif c == b"]":
                        raise ValueError("unescaped ] in PARAM-VALUE")
                    else:
                        value += c
                        j += 1
                params.append((pm.group().decode(), value.decode("utf-8")))
                i = j + 1
            if data[i : i + 1] != b"]":
                raise ValueError("SD-ELEMENT not closed")
            sd.append((nm.group().decode(), params))
            i += 1
        if not sd:
            raise ValueError("STRUCTURED-DATA missing")
    if i < len(data):
        if data[i : i + 1] != b" ":
            raise ValueError("no SP before MSG")
        i += 1
    hostname, app_name, procid, msgid = (g.decode() for g in m.group(3, 4, 5, 6))
    return Parsed(int(m.group(1)), m.group(2).decode(), hostname, app_name, procid, msgid, sd, data[i:])


def unframe(stream: bytes) -> list[bytes]:
    """Split an octet-counted stream (``MSG-LEN SP SYSLOG-MSG``...) strictly."""
    out, i = [], 0
    while i < len(stream):
        m = re.compile(rb"[1-9]\d{0,8} ").match(stream, i)
        if m is None:
            raise ValueError(f"bad frame at {i}")
        n = int(m.group()[:-1])
        start = m.end()
        if start + n > len(stream):
            raise ValueError("truncated frame")
        out.append(stream[start : start + n])
        i = start + n
    return out


def test_header_fields_and_pri() -> None:
    """PRI is facility*8+severity; header fields appear in order; nil values are '-'."""
    data = format_message(
        facility=FACILITIES["log_audit"], severity=6, msg="hello", time="2026-03-05T23:09:47.337Z",
        hostname="collector-1", app_name="instantly-audit", procid="42", msgid="member.removed",
    )  # fmt: skip
    p = parse_5424(data)
    assert p.pri == 13 * 8 + 6 == pri(13, 6)
    assert (p.timestamp, p.hostname, p.app_name, p.procid, p.msgid) == (
        "2026-03-05T23:09:47.337Z", "collector-1", "instantly-audit", "42", "member.removed",
    )  # fmt: skip
    assert p.sd == [] and p.msg == b"hello"
    nil = parse_5424(format_message(facility=1, severity=7, msg=b""))
    assert (nil.timestamp, nil.hostname, nil.app_name, nil.procid, nil.msgid) == ("-",) * 5


def test_dynamic_header_values_are_sanitised_and_cut() -> None:
    """Spaces and non-ASCII in dynamic header fields become '_' and long values are cut to the RFC limits."""
    p = parse_5424(format_message(facility=1, severity=5, msg="m", hostname="bad host ü", msgid="x" * 99))
    assert p.hostname == "bad_host__"
    assert p.msgid == "x" * 32


def test_config_values_are_checked() -> None:
    """Configured header fields and SD names are validated, not silently rewritten."""
    with pytest.raises(ValueError, match="app_name"):
        check_header_field("app_name", "has space")
    with pytest.raises(ValueError, match="app_name"):
        check_header_field("app_name", "a" * 49)
    for bad in ("with space", "eq=ual", 'qu"ote', "br]acket", "x" * 33, ""):
        with pytest.raises(ValueError, match="SD name"):
            check_sd_name(bad)
    assert check_sd_name("instantly@32473") == "instantly@32473"
    with pytest.raises(ValueError):
        pri(24, 0)
    with pytest.raises(ValueError):
        pri(0, 8)


def test_sd_param_escaping() -> None:
    """'"', '\\' and ']' in SD-PARAM values are escaped and parse back exactly."""
    value = 'a"b\\c]d [x="y"] \\"'
    data = format_message(facility=13, severity=6, msg="m", sd=[SDElement("instantly@32473", (("v", value),))])
    assert b'\\"' in data and b"\\]" in data and b"\\\\" in data
    assert parse_5424(data).sd == [("instantly@32473", [("v", value)])]


def test_timestamps() -> None:
    """Epoch seconds render with microseconds and Z; RFC 3339 text passes in RFC 5424's form; else nil."""
    assert timestamp(0.25) == "1970-01-01T00:00:00.250000Z"
    assert timestamp("2026-03-05T23:09:47.337Z") == "2026-03-05T23:09:47.337Z"
    assert timestamp("2026-03-05T23:09:47+01:00") == "2026-03-05T23:09:47+01:00"
    assert timestamp("yesterday") == "-"
    assert timestamp("2026-03-05T23:09:47.Z") == "-"
    # RFC 5424 DIGIT is ASCII: other Unicode digits in the fraction or offset make no timestamp
    assert timestamp("2026-03-05T23:09:47.\u0661\u0662Z") == "-"
    assert timestamp("2026-03-05T23:09:47+\uff10\uff15:\uff13\uff10") == "-"


def test_rfc3339_text_becomes_an_rfc5424_timestamp() -> None:
    """RFC 5424 §6.2.3: TIME-SECFRAC is 1-6 digits and T/Z are upper case; RFC 3339 allows more.

    Nanosecond text is truncated to microseconds (not dropped to nil, which would lose the time),
    and lower-case ``t``/``z`` or RFC 3339's space separator are normalised.
    """
    assert timestamp("2026-03-05T23:09:47.337123456Z") == "2026-03-05T23:09:47.337123Z"
    assert timestamp("2026-03-05t23:09:47.5z") == "2026-03-05T23:09:47.5Z"
    assert timestamp("2026-03-05 23:09:47.1234567-05:00") == "2026-03-05T23:09:47.123456-05:00"
    for impossible in (
        "2026-02-30T10:00:00Z",
        "2026-03-05T24:00:00Z",
        "2016-12-31T23:59:60Z",
        "2026-03-05T10:00:00+25:00",
    ):
        assert timestamp(impossible) == "-", impossible
    data = format_message(facility=13, severity=6, msg="m", time="2026-03-05T23:09:47.3371234Z")
    assert parse_5424(data).timestamp == "2026-03-05T23:09:47.337123Z"


def test_bom_marks_utf8_msg() -> None:
    """With bom=True the MSG starts with the UTF-8 BOM (once); without it, the MSG starts with the text."""
    assert parse_5424(format_message(facility=1, severity=1, msg="ü", bom=True)).msg == BOM + "ü".encode()
    assert parse_5424(format_message(facility=1, severity=1, msg=BOM + b"x", bom=True)).msg == BOM + b"x"
    assert parse_5424(format_message(facility=1, severity=1, msg="CEF:0|x")).msg == b"CEF:0|x"


def test_octet_counting_frames_any_bytes() -> None:
    """Octet-counted frames carry messages with newlines, digits and spaces; a stream splits back exactly."""
    msgs = [
        format_message(facility=13, severity=6, msg=m)
        for m in ("a\nb", "12 34", "", "\x00\xff".encode("latin-1").decode("latin-1"))
    ]
    stream = b"".join(frame(m) for m in msgs)
    assert unframe(stream) == msgs
    assert frame(b"abc") == b"3 abc"
    assert frame("é".encode()) == b"2 \xc3\xa9"


_PARAM_TEXT = st.text(st.characters(codec="utf-8"), max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_PARAM_TEXT, min_size=1, max_size=4),
    msg=st.binary(max_size=300),
    msgid=st.text(max_size=40),
    facility=st.integers(0, 23),
    severity=st.integers(0, 7),
)
def test_property_round_trip(values: list[str], msg: bytes, msgid: str, facility: int, severity: int) -> None:
    """Hypothesis: any SD values and MSG bytes survive format → frame → unframe → strict parse."""
    sd = [SDElement("instantly@32473", tuple((f"p{i}", v) for i, v in enumerate(values)))]
    data = format_message(facility=facility, severity=severity, msg=msg, msgid=msgid, sd=sd, time=1.5)
    (back,) = unframe(frame(data))
    p = parse_5424(back)
    assert p.pri == facility * 8 + severity
    assert p.sd == [("instantly@32473", [(f"p{i}", v) for i, v in enumerate(values)])]
    assert p.msg == msg
