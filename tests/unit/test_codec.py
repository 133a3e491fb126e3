"""The record codec and DeadLetter v1: bytes identical to before, round trips, clear rejections."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import codec, deadletter
from schemas.alert import Alert
from schemas.deadletter import DeadLetter
from schemas.errors import RecordError
from schemas.event import Event
from tests.fixtures.schemas.make_golden import OUT as GOLDEN
from tests.fixtures.schemas.make_golden import _cases

ROOT = Path(__file__).resolve().parents[2]
T = "2026-03-05T23:10:00.000Z"


def _golden() -> list[tuple[str, bytes]]:
    rows = [orjson.loads(line) for line in GOLDEN.read_bytes().splitlines()]
    return [(r["kind"], base64.b64decode(r["b64"])) for r in rows]


def _letter(**over: Any) -> DeadLetter:
    kw: dict[str, Any] = {
        "stage": "sink",
        "component": "siem",
        "component_type": "elasticsearch",
        "reason": "rejected",
        "error": "item 400 mapper_parsing_exception",
        "failed_at": T,
        "value": b'{"id":"x"}',
        "topic": "instantly.events.v1",
        "partition": 2,
        "offset": 41,
        "timestamp_ms": 1_772_000_000_000,
        "key": b"ws-1",
        "headers": [("traceparent", b"00-ab-cd-01"), ("Authorization", b"Bearer live_abc")],
        "record_id": "x",
    }
    kw.update(over)
    return deadletter.build(**kw)


def test_bytes_are_identical_to_the_dataclass_models() -> None:
    """Every golden record (made with the dataclass models) is built byte for byte the same today."""
    golden = _golden()
    now = _cases()
    assert len(golden) == len(now) >= 10
    for (kind, data), (kind_now, _args, data_now) in zip(golden, now, strict=True):
        assert (kind, data) == (kind_now, data_now)


def test_golden_records_decode_and_re_encode_unchanged() -> None:
    """Decoding a golden record and encoding it again gives the same bytes; the model validates."""
    for kind, data in _golden():
        record = codec.decode_record(data)
        assert isinstance(record, Alert if kind == "alert" else Event)
        again = codec.encode_alert(record) if isinstance(record, Alert) else codec.encode_event(record)
        assert again == data
        assert codec.validate(record) == [], kind


def test_from_dict_and_from_json_agree() -> None:
    """The dict path (msgspec.convert) and the bytes path build equal models."""
    for _kind, data in _golden():
        record = codec.decode_record(data)
        assert type(record).from_dict(orjson.loads(data)) == record  # type: ignore[union-attr]
        assert type(record).from_json(data) == record


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON ("),
        (b"[1, 2]", "not an Event v1: Expected `object`, got `array`"),
        (
            b'{"schema": "instantly.alert.v1"}',
            "not an Event v1: Invalid enum value 'instantly.alert.v1' - at `$.schema`",
        ),
        (b'{"id": "x"}', "not an Event v1: Object missing required field `type`"),
    ],
)
def test_decode_event_rejects_with_a_clear_error(data: bytes, message: str) -> None:
    """A bad record raises RecordError (a ValueError) that says what is wrong, and where."""
    with pytest.raises(RecordError) as err:
        codec.decode_event(data)
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


def test_mistyped_fields_are_rejected_with_their_path() -> None:
    """Types are checked in every nested struct, naming the JSON path."""
    good = orjson.loads(_golden()[0][1])
    cases = [
        ({**good, "workspace": {"id": 5, "name": None}}, "$.workspace.id"),
        ({**good, "source": {**good["source"], "kind": "email"}}, "$.source.kind"),
        ({**good, "actor": {**good["actor"], "via_api": "yes"}}, "$.actor.via_api"),
        ({**good, "attributes": None}, "$.attributes"),
    ]
    for d, path in cases:
        with pytest.raises(RecordError, match=path.replace("$", r"\$")):
            codec.decode_event(orjson.dumps(d))
    alert = orjson.loads(_golden()[-1][1])
    with pytest.raises(RecordError, match=r"\$\.rule\.severity"):
        codec.decode_alert(orjson.dumps({**alert, "rule": {**alert["rule"], "severity": "urgent"}}))


def test_decode_record_dispatches_on_schema() -> None:
    """decode_record picks the model by ``schema``; a missing or unknown one is an error."""
    letter = _letter()
    assert codec.decode_record(codec.encode_deadletter(letter)) == letter
    with pytest.raises(RecordError, match="unknown schema 'x'"):
        codec.decode_record(b'{"schema": "x"}')
    with pytest.raises(RecordError, match="unknown schema None"):
        codec.decode_record(b"{}")
    with pytest.raises(RecordError, match="not JSON"):
        codec.decode_record(b"\xff")


def test_decode_document_checks_what_consumers_rely_on() -> None:
    """decode_document gives the plain dict, checking object, schema and id only when asked."""
    data = _golden()[0][1]
    assert codec.decode_document(data, "instantly.event.v1") == orjson.loads(data)
    assert codec.decode_document(b'{"a": 1}') == {"a": 1}
    with pytest.raises(RecordError, match="not a JSON object"):
        codec.decode_document(b"[1]")
    with pytest.raises(RecordError, match=r"not instantly\.alert\.v1"):
        codec.decode_document(data, "instantly.alert.v1")
    with pytest.raises(RecordError, match="'id' must be a non-empty string"):
        codec.decode_document(b'{"id": ""}', "instantly.event.v1")


def test_validate_reports_schema_violations() -> None:
    """validate runs the JSON Schema: a model is valid, a dict breaking a pattern is not."""
    data = _golden()[0][1]
    assert codec.validate(orjson.loads(data)) == []
    assert codec.validate({**orjson.loads(data), "id": "not-hex"})
    (only,) = codec.validate({"schema": "nope"})
    assert only.startswith("schema: unknown schema 'nope'") and "instantly.deadletter.v1" in only


# ---- DeadLetter v1 ---------------------------------------------------------------------------------
def test_deadletter_validates_and_round_trips() -> None:
    """A built dead letter validates, decodes back equal and keeps the original bytes exactly."""
    letter = _letter()
    data = codec.encode_deadletter(letter)
    assert codec.validate(letter) == [] and codec.validate(orjson.loads(data)) == []
    assert codec.decode_deadletter(data) == letter and DeadLetter.from_json(data) == letter
    assert letter.original_bytes() == b'{"id":"x"}' and letter.original.key == "ws-1"
    assert list(orjson.loads(data)) == [*list(letter.to_dict())[1:], "schema"]


def test_deadletter_keeps_non_utf8_bytes_as_base64_and_redacts_secret_headers() -> None:
    """Bytes that are not UTF-8 are base64; secret-named headers never keep their value."""
    raw = b"\xff\x00 not json"
    letter = _letter(value=raw, reason="undecodable", record_id=None)
    assert (letter.original.encoding, letter.original.value) == ("base64", base64.b64encode(raw).decode())
    assert letter.original_bytes() == raw and codec.validate(letter) == []
    assert letter.original.headers == {"traceparent": "00-ab-cd-01", "Authorization": "<redacted>"}
    assert b"live_abc" not in codec.encode_deadletter(letter)
    dropped = _letter(value=None)
    assert dropped.original_bytes() is None and codec.validate(dropped) == []


def test_deadletter_ids_are_deterministic() -> None:
    """Same failure, same id (failed_at aside); another position, reason or value, another id."""
    assert _letter().id == _letter(failed_at="2030-01-01T00:00:00Z").id
    assert len({_letter().id, _letter(offset=42).id, _letter(reason="undecodable").id, _letter(value=b"{}").id}) == 4


def test_deadletter_build_rejects_bad_codes_and_cuts_long_errors() -> None:
    """Unknown stages and non-code reasons are refused; a long error is cut to 2000 characters."""
    with pytest.raises(ValueError, match="stage"):
        _letter(stage="nowhere")
    with pytest.raises(ValueError, match="reason"):
        _letter(reason="Not A Code")
    long = _letter(error="x" * 5000)
    assert len(long.error) == deadletter.MAX_ERROR_CHARS and long.error.endswith("…")


def test_deadletter_schema_rejects_bad_shapes() -> None:
    """The schema refuses an unknown stage, a value without encoding and an unredacted secret header."""
    d = _letter().to_dict()
    assert codec.validate({**d, "stage": "elsewhere"})
    assert codec.validate({**d, "original": {**d["original"], "encoding": None}})
    assert codec.validate({**d, "original": {**d["original"], "headers": {"token": "abc"}}})
    with pytest.raises(RecordError, match=r"\$\.original\.encoding"):
        codec.decode_deadletter(orjson.dumps({**d, "original": {**d["original"], "encoding": "latin-1"}}))


def test_deadletter_schema_file_is_valid_2020_12() -> None:
    """deadletter.v1.json is itself valid JSON Schema 2020-12."""
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads((ROOT / "schemas" / "deadletter.v1.json").read_text()))
