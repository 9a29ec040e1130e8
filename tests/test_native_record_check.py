"""The decoder's quick path in the core (``_native.check_record``) against the Python
validators (``events._decode_python``, the reference and the error path).

On every input, well-formed or not: the quick path returns exactly the fields the Python
path returns (same values, same types, same objects for outputs / features / label) or
``None``; and ``decode`` / ``decode_prediction`` / ``decode_label`` give the Python path's
record or its ``RecordError`` with the same reason and message."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streamweights import _native, events
from streamweights.events import Label, Prediction, RecordError
from tests.fuzzing import generated, mutate, random_input, valid_record

KINDS = {0: events.decode, 1: events.decode_prediction, 2: events.decode_label}


def _exact(value: Any) -> Any:
    """A comparable form that tells int from float from bool, and -0.0 from 0.0."""
    if type(value) is float:
        return ("float", value.hex())
    if type(value) in (list, tuple):
        return (type(value).__name__, [_exact(item) for item in value])
    if type(value) is dict:
        return ("dict", [(key, _exact(item)) for key, item in value.items()])
    if type(value) in (Prediction, Label):
        return (type(value).__name__, _exact(list(value.to_json().values())),
                _exact(value.ts))
    return (type(value).__name__, value)


def _python(raw: bytes, kind: int) -> Any:
    """The pure-Python decode: the record, or the refusal's (reason, message)."""
    try:
        return events._decode_python(events._parse(raw, events.DEFAULT_MAX_RECORD_BYTES), raw,
                                     kind)
    except RecordError as error:
        return (error.reason, str(error))


def _decoded(raw: bytes, kind: int) -> Any:
    try:
        return KINDS[kind](raw)
    except RecordError as error:
        return (error.reason, str(error))


def _fields(record: Prediction | Label) -> tuple[Any, ...]:
    if type(record) is Prediction:
        return (record.stream, record.id, record.ts, record.outputs, record.features)
    return (record.stream, record.id, record.ts, record.label)


def _number(rng: random.Random) -> Any:
    draw = rng.random()
    if draw < 0.5:
        return rng.uniform(-1, 1) * 10.0 ** rng.choice([0, 0, 3, 50, 99, 100])
    if draw < 0.7:
        return rng.choice([0, 1, -1, 7, 2**53 + 1, 2**63 - 1, -(2**63)])
    if draw < 0.8:
        return rng.choice([-0.0, 0.0, 1e100, -1e100, 5e-324, 1e-300])
    # Refused or beyond the quick path: out of range, bool, null, text, nested, u64.
    return rng.choice([1e101, -1.0000000000000002e100, True, False, None, "1", [1.0], {},
                       2**63, 2**64 - 1])


def _variant(rng: random.Random, index: int) -> bytes:
    """A record built field by field, mostly well-formed, reaching every rule: int / float
    ts and labels, scalar and list outputs, features, empty outputs with features,
    colons, quotes and escapes in strings, null / missing / extra fields, schema
    values, duplicate keys."""
    text = rng.choice(["c", "r", "e:17", 'a"b', "\\:", "é:ü", "x" * 50, "", "a\\nb"])
    record: dict[str, Any] = {
        "schema": rng.choice([1] * 12 + [0, 2, -1, True, 1.0, None, "1"]),
        "stream": rng.choice([text] * 8 + [None, 3, ["c"]]),
        "id": rng.choice([f"i{index}", f"t:{index}:{index}"] * 4 + [text, None, 0]),
        "ts": rng.choice([1000.5 + index, index, 2**53 + 1, 2**63 - 1, 0, -0.0] * 3
                         + [True, None, "1", 2**63, [1.0]]),
    }
    if rng.random() < 0.5:
        outputs: Any = {f"m{k}:{k}" if rng.random() < 0.1 else f"m{k}":
                        _number(rng) if rng.random() < 0.3
                        else [_number(rng) if rng.random() < 0.1 else rng.random()
                              for _ in range(rng.randint(0 if rng.random() < 0.05 else 1, 4))]
                        for k in range(rng.randint(0, 3))}
        if rng.random() < 0.05:
            outputs = rng.choice([None, [0.5], 1.0, "a"])
        record["outputs"] = outputs
        if rng.random() < 0.4:
            record["features"] = rng.choice(
                [[rng.gauss(0, 1) for _ in range(rng.randint(1, 5))], [], None, 1.0,
                 [_number(rng), 1.0], [[1.0]]])
        if rng.random() < 0.03:
            record["label"] = 1
    else:
        record["label"] = _number(rng) if rng.random() < 0.3 else rng.choice([0, 1, 2.5])
        if rng.random() < 0.03:
            record[rng.choice(["features", "outputs"])] = rng.choice([None, [1.0]])
    for name in list(record):
        if rng.random() < 0.03:
            del record[name]
    if rng.random() < 0.03:
        record[rng.choice(["x", "Schema", "label:"])] = 1
    raw = orjson.dumps(record)
    if rng.random() < 0.05:  # a duplicate key, in the record or in outputs
        raw = raw.replace(b'"id":', b'"id":"dup","id":', 1).replace(
            b'"m0":', b'"m0":1,"m0":', 1)
    if rng.random() < 0.1:
        raw = raw.replace(b",", b", ").replace(b":", b" : ")  # whitespace around separators
    return raw


def _inputs(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for index in range(count):
        draw = rng.random()
        if draw < 0.5:
            out.append(_variant(rng, index))
        elif draw < 0.6:
            out.append(mutate(_variant(rng, index), rng))
        elif draw < 0.75:
            out.append(valid_record(rng, index))
        elif draw < 0.85:
            out.append(generated(rng))
        else:
            out.append(random_input(rng, index))
    return out


def test_quick_path_returns_the_python_fields_or_none() -> None:
    cleared = accepted = 0
    for raw in _inputs(12_000, seed=11):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        for kind in KINDS:
            reference = _python(raw, kind)
            fields = _native.check_record(obj, raw, kind)
            if type(reference) is tuple:  # refused: the quick path must not clear it
                assert fields is None, (raw, kind, reference, fields)
                continue
            accepted += 1
            if fields is None:
                continue
            cleared += 1
            assert _exact(fields) == _exact(_fields(reference)), (raw, kind)
            # The parsed containers themselves, as the Python path keeps them.
            if type(reference) is Prediction:
                assert fields[3] is obj["outputs"]
                assert fields[4] is obj.get("features")
    # Every record orjson parses and Python accepts takes the quick path.
    assert accepted > 2_000
    assert cleared == accepted


def test_decode_equals_the_python_decode() -> None:
    reasons = set()
    for raw in _inputs(12_000, seed=12):
        for kind in KINDS:
            reference = _python(raw, kind) if _parses(raw) else None
            got = _decoded(raw, kind)
            if reference is None:  # refused by the parser: the same on both paths
                assert type(got) is tuple
                continue
            if type(reference) is tuple:
                reasons.add(reference[0])
            assert _exact(got) == _exact(reference), (raw, kind)
    # The inputs reach the validators' refusals, not only the parser's.
    assert {"wrong_type", "missing_field", "unknown_field", "duplicate_key", "out_of_range",
            "schema_version"} <= reasons


def _parses(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.mark.parametrize("raw", [
    b'{"schema":1,"stream":"s","id":"a:b","ts":5,"outputs":{"m":[0.5,0.5]}}',
    b'{"schema":1,"stream":"s","id":"i","ts":1.5,"outputs":{},"features":[1,2.5]}',
    b'{"schema":1,"stream":"s","id":"i","ts":1.5,"outputs":{"m":1e100,"n":-1e100}}',
    b'{"schema":1,"stream":"s","id":"i\\":","ts":1.5,"outputs":{"m":[1]},"features":null}',
    b'{"schema" : 1, "stream":"s","id":"i","ts":9007199254740993,"label":3}',
    b'{"schema":1,"stream":"s","id":"i","ts":-0.0,"label":-0.0}',
    b'{"schema":1,"stream":"s","id":"i","ts":18446744073709551615,"label":9223372036854775808}',
])
def test_quick_path_clears_well_formed_records(raw: bytes) -> None:
    obj = orjson.loads(raw)
    fields = _native.check_record(obj, raw, 0)
    assert fields is not None
    assert _exact(fields) == _exact(_fields(_python(raw, 0)))


@pytest.mark.parametrize("raw", [
    b'{"schema":1,"stream":"s","id":"i","ts":1,"label":true}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"label":1e101}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"label":1,"features":null}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"m":[]}}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{}}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"m":1,"m":2}}',
    b'{"schema":1,"stream":"s","id":"i","id":"i","ts":1,"label":1}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"m":1},"features":3}',
    b'{"schema":2,"stream":"s","id":"i","ts":1,"label":1}',
    b'{"schema":true,"stream":"s","id":"i","ts":1,"label":1}',
    b'{"schema":1,"stream":"","id":"i","ts":1,"label":1}',
    b'{"schema":1,"stream":"s","id":"i","ts":false,"label":1}',
    b'{"schema":1,"stream":"s","id":"i","ts":1,"label":1,"extra":1}',
    b'{"schema":1,"stream":"s","id":"i","ts":1}',
])
def test_quick_path_leaves_every_refusal_to_python(raw: bytes) -> None:
    assert _native.check_record(orjson.loads(raw), raw, 0) is None
    with pytest.raises(RecordError) as refused:
        events.decode(raw)
    assert (refused.value.reason, str(refused.value)) == _python(raw, 0)


def test_hand_built_objects_go_to_python() -> None:
    """Subclasses and values orjson never makes are not cleared (Python decides)."""
    class Dict(dict):
        pass

    base = {"schema": 1, "stream": "s", "id": "i", "ts": 1.0, "label": 1}
    raw = orjson.dumps(base)
    assert _native.check_record(base, raw, 0) is not None
    for obj in [Dict(base), {**base, "label": 2**130}, {**base, "ts": float("nan")},
                {**base, "ts": 2**200}, {**base, "label": float("inf")}, {**base, 1: 1},
                [base], None]:
        assert _native.check_record(obj, raw, 0) is None, obj


def test_core_constants_match_the_contract() -> None:
    assert _native.SCHEMA_VERSION == events.SCHEMA_VERSION
    assert _native.MAX_MAGNITUDE == events.MAX_MAGNITUDE
