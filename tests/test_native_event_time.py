"""The core's reading of a record's event time (``native/src/event_time.rs``) against
``kafka_source.event_time`` (orjson), the oracle: wherever the core answers, its answer
is the oracle's, to the bit; where it declines (``None``) the source asks the oracle.
And the merge that uses it buffers the same keys as the record-by-record oracle."""

from __future__ import annotations

import math
import random
import struct

import orjson

from streamweights import _native
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS, event_time
from tests.fuzzing import mutate, random_input, respell, valid_record
from tests.reference.kafka_merge import TaskMerge


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _agree(raws: list) -> int:
    """Assert the core agrees wherever it answers; return how many it answered."""
    answered = 0
    for raw, reading in zip(raws, _native.event_times(raws), strict=True):
        if reading is None:
            continue
        answered += 1
        expected = event_time(raw)
        assert _bits(reading) == _bits(expected), (raw, reading, expected)
    return answered


def _ts_text(rng: random.Random) -> str:
    """A ts literal of one of the shapes producers write, and some they should not."""
    shape = rng.randrange(9)
    if shape == 0:
        return str(rng.randrange(-10**19, 10**19))  # ints past i64 and 18 digits too
    if shape == 1:
        return repr(rng.uniform(0, 2e9))
    if shape == 2:
        return f"{rng.uniform(1e12, 2e12):.{rng.randrange(0, 6)}f}"  # ms with decimals
    if shape == 3:
        return f"{rng.uniform(-1, 1):.{rng.randrange(1, 25)}e}"
    if shape == 4:
        mantissa = f"{rng.random():.{rng.randrange(1, 20)}f}"
        return f"{mantissa}E{rng.randrange(-40, 40):+d}"
    if shape == 5:
        return rng.choice(["-0", "-0.0", "0", "0.0", "1e308", "1e309", "-1e400", "1e-400",
                           "5e-324", "2.2250738585072014e-308", "9007199254740993"])
    if shape == 6:
        return rng.choice(['"1"', "true", "false", "null", "[]", "{}", '{"ts": 1}', "[1.5]"])
    if shape == 7:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 30)))
        return digits.lstrip("0") or "0"
    return repr(rng.choice([1750000663.389, 1.7e9, 1732600000.1, 1e15 + 0.5]))


def test_the_core_reads_ts_literals_as_orjson_does():
    """Scenario: 20,000 records whose ts is written in many shapes (ints of every length,
    decimals with up to 25 digits, exponents near a double's limits, non-numbers), with
    the ts first, last, repeated or nested. We expect: every answer bit-identical to
    orjson's; the ordinary shapes answered by the core (not all declined)."""
    rng = random.Random(11)
    raws = []
    for _ in range(20_000):
        ts = _ts_text(rng)
        body = '"schema":1,"stream":"s","id":"e-1","outputs":{"a":[0.2,0.8]}'
        layout = rng.randrange(5)
        if layout == 0:
            text = f'{{"ts":{ts},{body}}}'
        elif layout == 1:
            text = f'{{{body},"ts":{ts}}}'
        elif layout == 2:
            text = f'{{"ts":1.5,{body},"ts":{ts}}}'  # duplicate: the last counts
        elif layout == 3:
            text = f'{{"x":{{"ts":{ts}}},{body}}}'  # a nested ts is not the record's
        else:
            text = f' \n{{ "ts" : {ts} , {body} }}\t'
        raws.append(text.encode())
    answered = _agree(raws)
    assert answered > 10_000


def test_the_core_agrees_on_valid_mutated_and_random_records():
    """Scenario: the fuzzer's valid records, their byte mutations (broken structure,
    escapes, invalid UTF-8, NaN, huge numbers, deep nesting), their respellings (numbers
    written another way, whitespace between tokens) and random inputs. We expect:
    wherever the core answers, orjson's answer; every valid record answered, and most
    respelled ones."""
    rng = random.Random(5)
    valid = [valid_record(rng, index) for index in range(3_000)]
    assert _agree(valid) == len(valid)
    mutated = [mutate(raw, rng) for raw in valid for _ in range(3)]
    randoms = [random_input(rng, index) for index in range(6_000)]
    respelled = [respell(raw, rng) for raw in valid for _ in range(3)]
    _agree(mutated)
    _agree(randoms)
    assert _agree(respelled) > len(respelled) // 2
    deep = [b'{"ts":1,"a":' + b"[" * depth + b"]" * depth + b"}" for depth in (10, 127, 129, 400)]
    answered = [reading is not None for reading in _native.event_times(deep)]
    assert answered == [True, True, False, False]
    _agree(deep)


def test_values_that_are_not_bytes_are_left_to_python():
    """Scenario: a tombstone (``None`` value), a bytearray, a str. We expect: ``None``
    from the core for each, so ``event_time`` decides (``-inf`` for a tombstone)."""
    assert _native.event_times([None, bytearray(b'{"ts":1}'), '{"ts":1}', b'{"ts":1}']) == \
        [None, None, None, 1.0]
    assert event_time(None) == -math.inf


def test_the_merge_buffers_the_keys_the_record_by_record_oracle_gives():
    """Scenario: a fetched batch mixing ordinary records, records the core declines
    (a ``\\u`` escape, a 20-digit ts), broken ones and a far-future jump, added with
    ``add_records`` on one merge and record by record with ``add`` (which reads each
    ts with ``event_time``) on another. We expect: the same buffered entries, in order."""

    class Record:
        def __init__(self, offset: int, value: bytes) -> None:
            self.offset, self.value = offset, value

    rng = random.Random(3)
    values = []
    for index in range(400):
        ts = 1_750_000_000 + index * 0.25
        kind = rng.randrange(6)
        if kind == 0:
            values.append(orjson.dumps({"ts": ts, "id": "\u00e9-" + str(index)}))
        elif kind == 1:
            values.append(b'{"id":"\\u0041","ts":' + repr(ts).encode() + b"}")
        elif kind == 2:
            values.append(b'{"ts":' + str(10**19 + index).encode() + b"}")
        elif kind == 3:
            values.append(b'{"ts": NaN}')
        else:
            values.append(orjson.dumps({"schema": 1, "ts": ts, "label": 1}))
    records = [Record(offset, value) for offset, value in enumerate(values)]
    for side in (PREDICTIONS, LABELS):
        batched, oracle = _native.TaskMerges(), TaskMerge(max_skew=3600.0)
        batched.add_records(5, side, records, event_time, 3600.0)
        for record in records:
            oracle.add(side, record.offset, event_time(record.value), record.value)
        assert batched.entries(5, side) == list(oracle.buffers[side])
        # the skew rule's memory (latest readable ts, its key) carried on alike
        batched.add(5, side, 400, 1_750_000_000 + 99 * 3600.0, b"jump", 3600.0)
        oracle.add(side, 400, 1_750_000_000 + 99 * 3600.0, b"jump")
        assert batched.entries(5, side)[-1] == oracle.buffers[side][-1]
