"""The wire contract: strict decoding with a stable reason and a message naming the field,
and encode/decode round trips."""

from __future__ import annotations

import json
import math

import orjson
import pytest

from streamweights import events
from streamweights.events import (
    Adapted,
    Label,
    Prediction,
    RecordError,
    Weights,
    decode,
    decode_label,
    decode_prediction,
    encode,
)


def _prediction(**changes):
    record = {"schema": 1, "stream": "fraud", "id": "e-17", "ts": 1732600000.1,
              "outputs": {"gbm": [0.1, 0.9], "mlp": [0.3, 0.7]}}
    record.update(changes)
    return record


def _label(**changes):
    record = {"schema": 1, "stream": "fraud", "id": "e-17", "ts": 1732600123.4, "label": 1}
    record.update(changes)
    return record


def _without(record, name):
    return {k: v for k, v in record.items() if k != name}


def _raw(record) -> bytes:
    """Encode like a Python producer does: the standard library writes NaN / Infinity."""
    return json.dumps(record).encode("utf-8")


def _error(raw, **kwargs) -> RecordError:
    with pytest.raises(RecordError) as caught:
        decode(raw, **kwargs)
    assert isinstance(caught.value, ValueError)  # the runtime catches ValueError too
    return caught.value


# -- the happy path ------------------------------------------------------------------
def test_prediction_round_trip():
    original = Prediction("fraud", "e-17", 1732600000.1,
                          {"gbm": [0.1, 0.9], "mlp": [0.3, 0.7]}, [1.5, -2.0, 0.25])
    decoded = decode(encode(original))
    assert decoded == original
    assert type(decoded) is Prediction
    assert decode_prediction(encode(original)) == original


def test_prediction_without_features_omits_the_field():
    original = Prediction("fraud", "e-17", 5.0, {"gbm": [0.1, 0.9]})
    assert "features" not in orjson.loads(encode(original))
    assert decode(encode(original)) == original


def test_regression_prediction_with_scalar_outputs_round_trips():
    original = Prediction("load", "r-1", 12.5, {"arima": 101.25, "gbm": -3})
    assert decode(encode(original)) == original


def test_label_round_trip_keeps_integers_and_floats():
    for value in (0, 3, 2.75):
        original = Label("fraud", "e-17", 1732600123.4, value)
        decoded = decode(encode(original))
        assert decoded == original
        assert type(decoded.label) is type(value)
        assert decode_label(encode(original)) == original


def test_float_values_survive_bit_for_bit():
    value = 0.1 + 0.2  # not representable with few digits
    original = Prediction("s", "i", 1732600000.123456789, {"m": [value, 1 - value]})
    decoded = decode(encode(original))
    assert decoded.ts == original.ts
    assert decoded.outputs["m"][0] == value


def test_decoding_accepts_str_and_bytes():
    raw = encode(Label("s", "i", 1.0, 0))
    assert decode(raw) == decode(raw.decode("utf-8"))


def test_adapted_encoding_classification_and_regression():
    proba = orjson.loads(encode(Adapted("fraud", "e-17", 3.0, [0.2, 0.8], None, 42)))
    assert proba == {"schema": 1, "stream": "fraud", "id": "e-17", "ts": 3.0,
                     "proba": [0.2, 0.8], "weights_version": 42}
    value = orjson.loads(encode(Adapted("load", "r-1", 3.0, None, 17.5, 0)))
    assert value == {"schema": 1, "stream": "load", "id": "r-1", "ts": 3.0, "value": 17.5,
                     "weights_version": 0}


def test_weights_encoding_has_every_field_of_the_contract():
    weights = Weights("fraud", 42, 9.5, {"gbm": 0.7, "mlp": 0.3},
                      {"1:OnlinePlatt": {"coefficients": [1.0, 0.0]}}, [0.9, 0.1],
                      {"events": 1, "recent": [{"n": 1, "ts": 9.0}]})
    record = orjson.loads(encode(weights))
    assert record == {"schema": events.SCHEMA_VERSION, "stream": "fraud", "version": 42,
                      "ts": 9.5, "ensemble": {"gbm": 0.7, "mlp": 0.3},
                      "calibration": {"1:OnlinePlatt": {"coefficients": [1.0, 0.0]}},
                      "prior": [0.9, 0.1], "drift": {"events": 1, "recent": [{"n": 1, "ts": 9.0}]}}
    assert Weights(**{k: v for k, v in record.items() if k != "schema"}) == weights


def test_encoding_is_compact_json():
    raw = encode(Label("s", "i", 1.0, 0))
    assert b" " not in raw
    assert json.loads(raw) == {"schema": 1, "stream": "s", "id": "i", "ts": 1.0, "label": 0}


# -- reasons -------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"schema": 1,}', b"", b'{"a" 1}',
                                 b'{"schema":1,"stream":"NaN",'])
def test_malformed_json(raw):
    error = _error(raw)
    assert error.reason == "malformed_json"
    assert "malformed JSON" in str(error)


def test_oversized_is_checked_before_parsing():
    raw = _raw(_prediction(features=[0.5] * 1000))
    error = _error(raw, max_bytes=len(raw) - 1)
    assert error.reason == "oversized"
    assert str(len(raw)) in str(error) and str(len(raw) - 1) in str(error)
    assert decode(raw, max_bytes=len(raw)).features == [0.5] * 1000
    # Garbage that is also too large is reported as too large: no parse is attempted.
    assert _error(b"x" * 101, max_bytes=100).reason == "oversized"


def test_oversized_counts_bytes_not_characters():
    text = json.dumps(_label(stream="é" * 40), ensure_ascii=False)
    limit = len(text) + 10  # enough characters, too few bytes (é is two bytes in UTF-8)
    assert len(text.encode("utf-8")) > limit
    assert _error(text, max_bytes=limit).reason == "oversized"
    assert _error(text.encode("utf-8"), max_bytes=limit).reason == "oversized"


def test_default_size_limit_is_one_mebibyte():
    big = _raw(_prediction(features=[0.5] * 300_000))
    assert len(big) > events.DEFAULT_MAX_RECORD_BYTES
    assert _error(big).reason == "oversized"


@pytest.mark.parametrize("schema", [2, 99])
def test_schema_from_the_future(schema):
    error = _error(_raw(_prediction(schema=schema)))
    assert error.reason == "schema_version"
    assert str(error).startswith("schema:")
    assert "upgrade" in str(error)


@pytest.mark.parametrize("schema", [0, -1])
def test_schema_below_one(schema):
    error = _error(_raw(_label(schema=schema)))
    assert error.reason == "schema_version"
    assert str(error).startswith("schema:")


@pytest.mark.parametrize("schema", ["1", 1.0, True, [1]])
def test_schema_of_the_wrong_type(schema):
    error = _error(_raw(_label(schema=schema)))
    assert error.reason == "wrong_type"
    assert str(error).startswith("schema:")


@pytest.mark.parametrize(("record", "field"), [
    (_without(_prediction(), "schema"), "schema"),
    (_without(_prediction(), "stream"), "stream"),
    (_without(_prediction(), "id"), "id"),
    (_without(_prediction(), "ts"), "ts"),
    (_without(_label(), "stream"), "stream"),
    (_without(_label(), "id"), "id"),
    (_without(_label(), "ts"), "ts"),
    (_prediction(stream=None), "stream"),
])
def test_missing_field(record, field):
    error = _error(_raw(record))
    assert error.reason == "missing_field"
    assert str(error).startswith(f"{field}:")


def test_record_that_is_neither_prediction_nor_label():
    error = _error(_raw(_without(_label(), "label")))
    assert error.reason == "missing_field"
    assert "outputs" in str(error) and "label" in str(error)


def test_typed_decoders_name_their_missing_field():
    with pytest.raises(RecordError, match=r"^outputs: missing") as caught:
        decode_prediction(_raw(_without(_prediction(), "outputs")))
    assert caught.value.reason == "missing_field"
    with pytest.raises(RecordError, match=r"^label: unknown field") as caught:
        decode_prediction(_raw(_label()))  # a label is not a prediction
    assert caught.value.reason == "unknown_field"
    with pytest.raises(RecordError) as caught:
        decode_label(_raw(_without(_label(), "label")))
    assert caught.value.reason == "missing_field"
    assert str(caught.value).startswith("label:")


@pytest.mark.parametrize(("record", "field"), [
    # bool is not a number
    (_prediction(ts=True), "ts"),
    (_label(label=True), "label"),
    (_label(label=False), "label"),
    (_prediction(outputs={"gbm": [True, False]}), "outputs.gbm"),
    (_prediction(outputs={"gbm": True}), "outputs.gbm"),
    (_prediction(features=[1.0, True]), "features"),
    # strings
    (_prediction(ts="1732600000.1"), "ts"),
    (_label(label="1"), "label"),
    (_prediction(stream=17), "stream"),
    (_prediction(stream=""), "stream"),
    (_label(id=17), "id"),
    (_label(id=""), "id"),
    (_prediction(outputs={"gbm": ["0.1", "0.9"]}), "outputs.gbm"),
    (_prediction(outputs={"gbm": "0.9"}), "outputs.gbm"),
    (_prediction(outputs="gbm"), "outputs"),
    (_prediction(features="1,2"), "features"),
    # lists, objects, empties
    (_prediction(ts=[1.0]), "ts"),
    (_label(label=[1]), "label"),
    (_label(label={"class": 1}), "label"),
    (_prediction(stream=["fraud"]), "stream"),
    (_prediction(outputs=[[0.1, 0.9]]), "outputs"),
    (_prediction(outputs={}), "outputs"),
    (_prediction(outputs={"gbm": []}), "outputs.gbm"),
    (_prediction(outputs={"gbm": [[0.1, 0.9]]}), "outputs.gbm"),
    (_prediction(outputs={"gbm": {"p": 0.1}}), "outputs.gbm"),
    (_prediction(features=[]), "features"),
    (_prediction(features=1.0), "features"),
    (_prediction(features=[[1.0]]), "features"),
])
def test_wrong_type(record, field):
    error = _error(_raw(record))
    assert error.reason == "wrong_type"
    assert str(error).startswith(f"{field}:"), str(error)


@pytest.mark.parametrize("document", [[1, 2], "text", 17, None])
def test_top_level_must_be_an_object(document):
    error = _error(_raw(document))
    assert error.reason == "wrong_type"
    assert str(error).startswith("record:")


@pytest.mark.parametrize(("record", "field"), [
    (_prediction(extra=1), "extra"),
    (_prediction(label=1), "label"),  # a prediction carrying a label
    (_label(outputs_=1), "outputs_"),
    (_label(features=[1.0]), "features"),  # features belong to predictions
    (_label(proba=[0.2, 0.8]), "proba"),  # an adapted record is not an input
])
def test_unknown_field(record, field):
    error = _error(_raw(record))
    assert error.reason == "unknown_field"
    assert str(error).startswith(f"{field}:")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("make", "field"), [
    (lambda v: _prediction(ts=v), "ts"),
    (lambda v: _label(ts=v), "ts"),
    (lambda v: _label(label=v), "label"),
    (lambda v: _prediction(outputs={"gbm": [0.1, 0.9], "mlp": [v, 0.7]}), "outputs.mlp"),
    (lambda v: _prediction(outputs={"gbm": v}), "outputs.gbm"),
    (lambda v: _prediction(features=[1.0, v]), "features"),
])
def test_non_finite_numbers_written_by_python(value, make, field):
    raw = _raw(make(value))
    assert b"NaN" in raw or b"Infinity" in raw  # what json.dumps writes
    error = _error(raw)
    assert error.reason == "non_finite"
    assert str(error).startswith(f"{field}:")


def test_non_finite_number_in_a_string_field_is_only_a_string():
    decoded = decode(_raw(_label(id="NaN", stream="Infinity")))
    assert (decoded.id, decoded.stream) == ("NaN", "Infinity")


def test_every_reason_is_a_short_stable_label():
    cases = [b"{", _raw(_label(schema=5)), _raw(_without(_label(), "ts")),
             _raw(_label(ts="x")), _raw(_label(x=1)), _raw(_label(label=math.nan))]
    reasons = {_error(raw).reason for raw in cases} | {_error(b"xx", max_bytes=1).reason}
    assert reasons == {"malformed_json", "oversized", "schema_version", "missing_field",
                       "wrong_type", "unknown_field", "non_finite"}


# -- a strict, total decoder (issue 12) ------------------------------------------------
@pytest.mark.parametrize(("raw", "field"), [
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"ts":2,"label":1}', "ts"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"label":NaN,"label":1}', "label"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":[0.5,0.5],"a":[0.1,0.9]}}',
     "outputs.a"),
    (b'{"schema":1,"stream":"s:x","id":"i:y","ts":1,"label":1,"label":0}', "label"),
])
def test_duplicate_keys_are_refused(raw, field):
    """orjson keeps the last duplicate silently; the decoder refuses the record instead
    (a hidden NaN is refused as such: it never parses)."""
    error = _error(raw)
    assert error.reason in ("duplicate_key", "non_finite")
    if error.reason == "non_finite":
        assert str(error).startswith(f"{field}:")


def test_colons_and_escaped_quotes_inside_strings_are_not_duplicates():
    record = decode(_raw(_label(id='a:b"c:\\\\:', stream="x:y")))
    assert (record.id, record.stream) == ('a:b"c:\\\\:', "x:y")
    prediction = decode(_raw(_prediction(outputs={"g:b": [0.1, 0.9], 'm"l:p': [0.3, 0.7]})))
    assert list(prediction.outputs) == ["g:b", 'm"l:p']


@pytest.mark.parametrize("raw", [
    b'{"schema":1,"stream":"s","id":"\xff","ts":1,"label":1}',
    b'{"schema":1,"stream":"s","id":"\\ud800","ts":1,"label":1}',
    '{"schema":1,"stream":"s","id":"\ud800","ts":1,"label":1}',
    b"\xff\xfe",
])
def test_invalid_utf8_and_lone_surrogates_are_refused(raw):
    """Never replaced silently: an id that is not UTF-8 cannot be encoded on the way out."""
    assert _error(raw).reason == "invalid_utf8"


def test_nesting_is_bounded():
    deep = b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":' + b"[" * 5000 + b"1" \
        + b"]" * 5000 + b"}}"
    assert _error(deep).reason == "too_deep"
    # Shallower than the parser's limit but deeper than the contract: a shape error.
    nested = b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":[[0.5,0.5]]}}'
    assert _error(nested).reason == "wrong_type"


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"label":1e400}', "label"),
    (b'{"schema":1,"stream":"s","id":"i","ts":-1e309,"label":1}', "ts"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"label":1e101}', "label"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":[1,-1e200]}}', "outputs.a"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":2e154}}', "outputs.a"),
    (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":1},"features":[1e300]}',
     "features"),
])
def test_numbers_beyond_the_bound_are_refused(raw, field):
    error = _error(raw)
    assert error.reason == "out_of_range"
    assert str(error).startswith(f"{field}:")


def test_numbers_at_the_bound_and_huge_integers_are_accepted():
    assert decode(_raw(_label(label=events.MAX_MAGNITUDE))).label == 1e100
    record = decode(b'{"schema":1,"stream":"s","id":"i","ts":1,"label":18446744073709551615}')
    assert record.label == 2**64 - 1


def test_non_finite_tokens_are_named_without_a_second_parse(monkeypatch):
    """The old decoder re-parsed with the standard library (OverflowError, RecursionError
    and lone surrogates came through it); now nothing else parses the text."""
    import json as standard

    def refuse(*_args, **_kwargs):
        raise AssertionError("second parse")

    monkeypatch.setattr(standard, "loads", refuse)
    raw = b'{"schema":1,"stream":"\xc3\xa9","id":"i","ts":1,"outputs":{"a":[0.5,-Infinity]}}'
    error = _error(raw)
    assert error.reason == "non_finite"
    assert str(error).startswith("outputs.a:")
    assert _error(b'{"schema":1,"stream":"s","id":"' + b"[" * 3000 + b'","ts":NaN' +
                  b"1" * 10).reason == "non_finite"


def test_every_new_reason_is_documented_in_the_readme():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for reason in ("duplicate_key", "invalid_utf8", "too_deep", "out_of_range", "non_finite",
                   "internal_error", "event_time_skew", "non_finite_state"):
        assert f"`{reason}`" in readme, reason


def test_record_types_keep_their_dataclass_behaviour_with_the_quick_init():
    """Prediction, Label and Adapted are made with an ``__init__`` that sets the slots
    directly (``events._slot_init``, made once per record): the same signature and
    defaults, frozen, equal and hashable by value, ``dataclasses.replace`` and pickle
    work, and a missing argument is the usual TypeError."""
    import dataclasses
    import inspect
    import pickle

    from streamweights.events import Adapted

    for cls, args in ((Prediction, ("s", "i", 1.0, {"a": [0.5, 0.5]})),
                      (Label, ("s", "i", 1.0, 1)),
                      (Adapted, ("s", "i", 1.0, [0.5, 0.5], None, 3))):
        names = [field.name for field in dataclasses.fields(cls)]
        assert list(inspect.signature(cls).parameters) == names
        record = cls(*args)
        by_name = cls(**dict(zip(names, args, strict=False)))
        assert record == by_name
        if cls is Label:  # (the others hold lists and dicts)
            assert hash(record) == hash(by_name)
        for field in dataclasses.fields(cls)[len(args):]:
            assert getattr(record, field.name) == field.default
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.stream = "other"  # type: ignore[misc]
        assert dataclasses.replace(record, id="j").id == "j"
        assert pickle.loads(pickle.dumps(record)) == record
        with pytest.raises(TypeError, match="missing"):
            cls("s")
