"""CEF: hostile characters survive a round trip through a strict, independent parser; keys and lengths are restricted.

The strict parser below is written from the ArcSight "Implementing CEF" guide, not from the
formatter: a header of seven ``|``-separated fields where only ``\\\\`` and ``\\|`` are escapes;
an extension of ``key=value`` pairs where a key is ``[A-Za-z0-9_]+`` preceded by a space,
values end at the space before the next key, and only ``\\\\``, ``\\=``, ``\\n``, ``\\r`` are
escapes. Anything else (an unescaped ``=`` in a value, a bad escape, a raw line break) is an
error. The PyPI parser ``pycef`` is used too, for ordinary records only: its header regex
refuses backslashes and ``=`` in header fields, so it cannot take hostile headers.
"""

from __future__ import annotations

import re
from typing import Any

import pycef  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.formats import to_cef
from pipeline.formats._common import epoch_ms
from pipeline.formats.cef import EXTENSION_KEYS, cef_line
from schemas import Actor, Event, Source, Target
from tests.unit.test_formats_native import SEEN, T0, WS, normalizer_events, sample_alert, sample_events

HOSTILE = [
    "a|b", "a=b", "a\\b", "trailing\\", "\\|", "\\=", "line\nbreak", "cr\rlf\r\n", "x  =  y", " k=v ",
    "msg=forged cs1=evil", "|CEF:0|x|y|z|1|n|10|", "ünïcödé ✓", "emoji 🦊 \U0001d518", "nul\x00tab\tesc\x1b[31m",
    "]\"'", "\\\\n", "=", "\\", "|",
]  # fmt: skip


# ------------------------------------------------------------------------------ strict parser
class CefError(ValueError):
    """The line is not strict CEF."""


def _unescape(text: str, escapes: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c in "\r\n":
            raise CefError("raw line break")
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in escapes:
                raise CefError(f"invalid escape at {i}: {text[i : i + 2]!r}")
            out.append(escapes[text[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_cef(line: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Strictly parse one CEF line into (header fields incl. version, [(key, value), ...])."""
    if not line.startswith("CEF:"):
        raise CefError("no CEF: prefix")
    fields: list[str] = []
    start, i = 4, 4
    while len(fields) < 7:
        if i >= len(line):
            raise CefError("header has fewer than 8 fields")
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == "|":
            fields.append(_unescape(line[start:i], {"\\": "\\", "|": "|"}))
            start = i + 1
        i += 1
    ext = line[start:]
    equals, j = [], 0
    while j < len(ext):
        if ext[j] == "\\":
            j += 2
            continue
        if ext[j] == "=":
            equals.append(j)
        j += 1
    keys = []
    for pos in equals:
        m = re.search(r"(?:^| )([A-Za-z0-9_]+)$", ext[:pos])
        if m is None:
            raise CefError(f"unescaped '=' without a key at {pos}")
        keys.append((m.group(1), pos - len(m.group(1)), pos))
    if keys and keys[0][1] != 0:
        raise CefError("text before the first key")
    if not keys and ext:
        raise CefError("extension without keys")
    pairs = []
    for n, (key, _start, pos) in enumerate(keys):
        end = keys[n + 1][1] - 1 if n + 1 < len(keys) else len(ext)
        pairs.append((key, _unescape(ext[pos + 1 : end], {"\\": "\\", "=": "=", "n": "\n", "r": "\r"})))
    return fields, pairs


# ------------------------------------------------------------------------------ the model
def header_model(text: str, limit: int) -> str:
    """What a header field must read after the round trip: controls → U+FFFD, cut with an ellipsis."""
    text = re.sub(r"[\x00-\x1f\x7f]", "\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def value_model(text: str, limit: int) -> str:
    """What an extension value must read: CR/LF kept, other controls → U+FFFD, cut with an ellipsis."""
    text = re.sub(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------ tests
def test_golden_line() -> None:
    """A known event renders to exactly this CEF line (format changes must be deliberate)."""
    line = to_cef(sample_events()["role_down"])
    fields, pairs = parse_cef(line)
    assert fields[:6] == [
        "0",
        "Instantly-Audit",
        "instantly-audit",
        fields[3],
        "member:role_changed",
        "Member role changed",
    ]
    assert fields[6] == "1"
    ext = dict(pairs)
    assert ext["cs5Label"] == "oldRole" and ext["cs5"] == "owner"
    assert ext["cs6Label"] == "newRole" and ext["cs6"] == "editor"
    assert ext["duser"] == "mallory@example.com"
    assert ext["msg"].endswith("in workspace Acme | Growth = \\ team")
    assert line.endswith("in workspace Acme | Growth \\= \\\\ team")


@pytest.mark.parametrize("name", sorted(sample_events()))
def test_every_sample_parses_strictly(name: str) -> None:
    """Every sample event renders to strict CEF with the stable event id and workspace."""
    event = sample_events()[name]
    fields, pairs = parse_cef(to_cef(event))
    ext = dict(pairs)
    assert len(pairs) == len(ext), "no key appears twice"
    assert fields[4] == event.type.replace(".", ":", 1)
    assert 0 <= int(fields[6]) <= 10
    assert ext["externalId"] == event.id
    assert ext["cs1Label"] == "workspaceId" and ext["cs1"] == WS.id
    assert int(ext["rt"]) == epoch_ms(T0)
    assert set(ext) <= set(EXTENSION_KEYS)


def test_real_normalizer_events_parse_strictly() -> None:
    """Every event the Instantly normalizer makes renders to strict CEF carrying its id and audit code."""
    for event in normalizer_events():
        fields, pairs = parse_cef(to_cef(event))
        ext = dict(pairs)
        assert ext["externalId"] == event.id and fields[4] == event.type.replace(".", ":", 1)
        code = event.attributes.get("activity_code")
        if isinstance(code, int):
            assert ext["cn1"] == str(code)


def test_audit_login_fields() -> None:
    """A login carries suser/suid, src, the client application, the audit code and outcome."""
    ext = dict(parse_cef(to_cef(sample_events()["login"]))[1])
    assert (ext["suser"], ext["src"], ext["outcome"]) == ("Jane Doe", "203.0.113.9", "success")
    assert ext["requestClientApplication"] == "Mozilla/5.0 (X11; Linux x86_64)"
    assert (ext["cn1Label"], ext["cn1"]) == ("activityType", "1")
    v6 = dict(parse_cef(to_cef(sample_events()["audit_key_created"]))[1])
    assert (v6["c6a2Label"], v6["c6a2"]) == ("Source IPv6 Address", "2001:db8::7")
    assert v6["cs2"] == "3f9e0c1a-2b4d-4e6f-8a0b-1c2d3e4f5a6b"


def test_api_key_custom_strings() -> None:
    """API key events label the key id, scopes and fingerprint slots."""
    ext = dict(parse_cef(to_cef(sample_events()["key_created"]))[1])
    assert (ext["cs2Label"], ext["cs3Label"], ext["cs4Label"]) == ("apiKeyId", "scopes", "keyFingerprint")
    assert (ext["cs3"], ext["cs4"]) == ("all:all", "sha256:0123abcd")


def test_alert_line() -> None:
    """An alert's header names the rule and maps critical to 10; the extension carries dedup key and counts."""
    alert = sample_alert()
    fields, pairs = parse_cef(to_cef(alert))
    ext = dict(pairs)
    assert fields[4:7] == ["alert:api_key.all_scope", alert.rule.title, "10"]
    assert ext["cs2"] == alert.dedup_key
    assert ext["msg"] == alert.summary
    assert ext["cnt"] == "1"
    assert ext["act"] == "open"
    assert int(ext["start"]) == epoch_ms(T0) and int(ext["end"]) == epoch_ms(SEEN)


def test_a_resolved_alert_is_low_severity_with_its_rules_severity_labelled() -> None:
    """The all-clear of a critical condition is not a Very-High event (a severity-routed SIEM rule would fire on
    it): header severity 3; the rule's severity stays in flexString2 (ruleSeverity), on open alerts too."""
    opened, res = (dict(parse_cef(to_cef(sample_alert(status=s)))[1]) for s in ("open", "resolved"))
    assert parse_cef(to_cef(sample_alert(status="resolved")))[0][6] == "3"
    assert (res["act"], res["flexString2Label"], res["flexString2"]) == ("resolved", "ruleSeverity", "critical")
    assert (opened["act"], opened["flexString2"]) == ("open", "critical")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_values_round_trip(text: str) -> None:
    """Pipes, equals, backslashes, newlines, unicode and controls survive in header and extension."""
    line = cef_line(
        signature_id=text or "x", name=text, severity=5, extension=[("msg", text), ("suser", text), ("cs1", text)]
    )
    assert "\n" not in line and "\r" not in line
    fields, pairs = parse_cef(line)
    assert fields[4] == header_model(text, 1023)
    assert fields[5] == header_model(text, 512)
    assert pairs == [(k, value_model(text, 4000)) for k in ("msg", "suser", "cs1")]


def test_hostile_event_round_trip() -> None:
    """An event whose every text field is hostile still parses strictly with the right values."""
    evil = "x|y=z\\w\nnext cs1=forged\r|"
    event = Event.build(
        type="member.removed", time=T0, observed_at=SEEN, workspace=WS, source=Source("snapshot", "members", evil),
        natural_key=(evil,), actor=Actor(user_id=evil, user_name=evil, ip="198.51.100.1", user_agent=evil),
        target=Target("member", evil, evil),
    )  # fmt: skip
    _fields, pairs = parse_cef(to_cef(event))
    ext = dict(pairs)
    assert ext["cs1"] == WS.id, "a value cannot forge a key"
    for key in ("suser", "suid", "duser", "duid", "requestClientApplication", "flexString1"):
        assert ext[key] == evil, key


def test_very_long_values_are_cut_to_the_dictionary_length() -> None:
    """A 100 kB summary becomes a 1023-character msg ending in an ellipsis; the title fits in 512."""
    data: dict[str, Any] = sample_alert(summary="S" * 100_000).to_dict()
    data["rule"].update(title="T" * 5000, runbook="r" * 9000)
    fields, pairs = parse_cef(to_cef(data))
    ext = dict(pairs)
    assert len(ext["msg"]) == 1023 and ext["msg"].endswith("…")
    assert len(ext["cs5"]) == 4000
    assert len(fields[5]) == 512


def test_keys_and_severity_are_restricted() -> None:
    """Unknown or malformed extension keys and severities outside 0-10 are refused."""
    with pytest.raises(ValueError, match="not in the allowed"):
        cef_line(signature_id="s", name="n", severity=1, extension=[("evil key", "x")])
    with pytest.raises(ValueError, match="not in the allowed"):
        cef_line(signature_id="s", name="n", severity=1, extension=[("customThing", "x")])
    with pytest.raises(ValueError, match="0-10"):
        cef_line(signature_id="s", name="n", severity=11, extension=[])
    for odd in ("High", 5.0, True):  # a clear error, not a TypeError from comparing a str with an int
        with pytest.raises(ValueError, match="integer 0-10"):
            cef_line(signature_id="s", name="n", severity=odd, extension=[])  # type: ignore[arg-type]
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", k) for k in EXTENSION_KEYS)


_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=400, deadline=None)
@given(signature=_ANY_TEXT, name=_ANY_TEXT, values=st.lists(_ANY_TEXT, min_size=1, max_size=6))
def test_property_round_trip(signature: str, name: str, values: list[str]) -> None:
    """Hypothesis: any Unicode in header fields and extension values round-trips through the strict parser."""
    keys = ["msg", "cs1", "cs2", "suser", "duser", "reason"][: len(values)]
    line = cef_line(signature_id=signature, name=name, severity=3, extension=list(zip(keys, values, strict=True)))
    fields, pairs = parse_cef(line)
    assert fields[4:6] == [header_model(signature, 1023), header_model(name, 512)]
    expected = [(k, value_model(v, EXTENSION_KEYS[k])) for k, v in zip(keys, values, strict=True) if v]
    assert pairs == expected


@settings(max_examples=150, deadline=None)
@given(title=_ANY_TEXT.filter(bool), summary=_ANY_TEXT.filter(bool), entity=_ANY_TEXT)
def test_property_alert_round_trip(title: str, summary: str, entity: str) -> None:
    """Hypothesis: an alert with any title, summary and entity name parses back to the same values."""
    alert = sample_alert()
    data: dict[str, Any] = alert.to_dict()
    data["rule"]["title"] = title
    data["summary"] = summary
    data["entities"] = [{"kind": "member", "id": "m1", "name": entity}]
    fields, pairs = parse_cef(to_cef(data))
    ext = dict(pairs)
    assert fields[5] == header_model(title, 512)
    assert ext["msg"] == value_model(summary, 1023)
    assert ext["cs6"] == value_model(f"member:m1:{entity}", 4000)


def test_pycef_reads_ordinary_records() -> None:
    """The PyPI parser pycef reads our ordinary records: header fields and extension values agree."""
    for name in ("login", "key_created", "member_invited"):
        event = sample_events()[name]
        line = to_cef(event)
        parsed = pycef.parse(line)
        assert parsed is not None, name
        fields, pairs = parse_cef(line)
        assert parsed["DeviceVendor"] == "Instantly-Audit"
        assert parsed["DeviceEventClassID"] == fields[4]
        assert parsed["Name"] == fields[5]
        assert parsed["Severity"] == fields[6]
        ours = dict(pairs)
        # pycef folds csN/csNLabel into label → value and leaves escapes in place.
        assert parsed["workspaceId"] == ours["cs1"]
        assert parsed["externalId"] == ours["externalId"]
        assert _unescape(parsed["msg"], {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}) == ours["msg"]


def test_webhook_created_carries_the_target_host() -> None:
    """webhook.created names the host it delivers to in dhost (not the path or query, which may hold a token)."""
    from tests.unit.test_formats_native import sample_events

    line = to_cef(sample_events()["webhook_created"])
    assert "dhost=hooks.example.com " in line and "/x" not in line.split("dhost=")[1].split(" ")[0]
