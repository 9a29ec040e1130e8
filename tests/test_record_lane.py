"""The core's record lane (``Pipeline.record_lane``, ``native/src/lane.rs``): one core
call from a raw record to the stream's updated state. These tests hold it to the
general path (decode -> process -> encode), bit for bit: for every record the same
kind, the same adapted bytes, the same dead letters, weights versions, expiries,
evictions and drift reactions, and in the end the same counters and the same state;
and they check that the lane leaves to Python every record it is not certain of."""

from __future__ import annotations

import dataclasses
import math
import random
import struct

import orjson
import pytest

from streamweights import _native, events
from streamweights.adapters import dumps_state, loads_state
from streamweights.config import StreamConfig
from streamweights.pipeline import Outcome, Pipeline
from tests import fuzzing
from tests.test_pipeline_batch import (
    _comparable,
    _one_at_a_time,
    _replay,
    _streams,
    _switching,
    _with_bad_records,
)


def _through_lane(pipeline: Pipeline, raws: list[bytes],
                  taken_at: list[int] | None = None) -> tuple[list, int]:
    """What ``Service._loop`` does per record: the lane, else the general path. Returns one
    ``(kind, outcome or None, encoded)`` per record (``None``: the lane applied it and
    had nothing to route) and how many records the lane took (their indices appended to
    ``taken_at`` when given)."""
    lane = pipeline.record_lane()
    assert lane is not None
    results, taken = [], 0
    for index, raw in enumerate(raws):
        done = lane.process(raw, True)
        if done is not None:
            taken += 1
            if taken_at is not None:
                taken_at.append(index)
            (stream, kind), result = done
            assert stream == "demo" and kind in ("prediction", "label")
            if result is None or type(result) is bytes:
                results.append((kind, None, (result, [])))
                continue
            assert isinstance(result, Outcome)
            results.append((kind, result, (
                None if result.adapted is None else events.encode(result.adapted),
                [events.encode(weights) for weights in result.weights])))
            continue
        results.extend(_one_at_a_time(pipeline, [raw]))
    return results, taken


def _plain(outcome: Outcome, kind: str) -> bool:
    """An outcome with nothing to route but its adapted record (what the lane returns
    ``None`` or bytes for)."""
    return (not outcome.weights and not outcome.dead_letters and not outcome.expired
            and not outcome.evicted and outcome.drift is None and not outcome.artifacts
            and outcome.learned == (kind == "label"))


def _check_same(streams: tuple[StreamConfig, ...], raws: list[bytes],
                taken_at: list[int] | None = None) -> tuple[int, Pipeline]:
    general = Pipeline(streams)
    expected = _one_at_a_time(general, raws)
    laned = Pipeline(streams)
    got, taken = _through_lane(laned, raws, taken_at)
    assert len(got) == len(expected) == len(raws)
    for index, ((kind, outcome, encoded), (want_kind, want, want_encoded)) in enumerate(
            zip(got, expected, strict=True)):
        assert kind == want_kind, index
        assert encoded == want_encoded, index
        if outcome is None:
            assert _plain(want, kind), index
        else:
            assert _comparable(outcome) == _comparable(want), index
    assert laned.invalid == general.invalid
    assert laned.summary() == general.summary()
    assert dumps_state(laned.state_dict()) == dumps_state(general.state_dict())
    return taken, laned


def _mixed(seed: int) -> list[bytes]:
    replay = _replay(1_500)
    after = max(orjson.loads(raw)["ts"] for raw in replay) + 1.0
    return _with_bad_records(replay + _switching(3_000, seed, after), replay, seed)


@pytest.mark.parametrize(("config", "seed"), [("kafka.yaml", 1), ("kafka.yaml", 2),
                                              ("demo.yaml", 1)])
def test_the_lane_gives_what_the_general_path_gives(config, seed):
    """Scenario: the Kafka config's chain (FixedShare -> OnlinePlatt -> DriftMemory) and
    the default one (a portfolio of four candidate chains, a drift memory, conformal
    sets on the adapted output and each model, estimates), fed a replay, a stream whose
    best model turns bad, and bad records (fuzzed, duplicates, unmatched labels, an
    unknown stream, wrong shapes, far-future times). We expect: record by record what
    decode -> process -> encode gives (the conformal sets in the adapted records
    included), the same counters and the same state; most records taken by the lane,
    drift reactions among them."""
    raws = _mixed(seed)
    taken, laned = _check_same(_streams(config), raws)
    assert taken > 0.9 * len(raws)
    assert laned.streams["demo"].drift_total >= 1


@pytest.mark.parametrize(("config", "seed"), [("demo.yaml", 1), ("demo.yaml", 2),
                                              ("kafka.yaml", 3)])
def test_numbers_and_spacing_spelled_anew_read_as_the_decoder_reads_them(config, seed):
    """Scenario: a replay with a quarter of its records respelled (numbers written another
    way with the same value, point and exponent moved, zeros added, ``E``, ``+``; or any
    number, valid or nearly; or whitespace between tokens) and a twentieth mutated at
    the byte level (``tests/fuzzing.py``). We expect: record by record what decode ->
    process -> encode gives, the same counters and state, and the lane's own reader
    taking most respelled records (not leaving them all to Python). ``bench/fuzz.py
    --lane`` runs the same over a million records."""
    raws, changed = fuzzing.respelled(_replay(1_500), random.Random(seed))
    taken_at: list[int] = []
    taken, _ = _check_same(_streams(config), raws, taken_at)
    assert taken > 0.7 * len(raws)  # (79% with these seeds)
    assert len(changed.intersection(taken_at)) > 0.4 * len(changed)  # (51%)


def test_the_lane_leaves_expiry_eviction_and_publishing_to_python():
    """Scenario: the same chain with a join of 7 entries, a 15 s TTL, a weights version
    every 5 labels or 3 s, and a 30 s skew limit, so that evictions, expiries, weights
    versions and skew refusals happen every few records. We expect: the general path's
    results record by record and the same state."""
    streams = tuple(dataclasses.replace(stream, max_pending=7, ttl_seconds=15.0,
                                        publish_every_labels=5, publish_every_seconds=3.0,
                                        max_event_time_skew_seconds=30.0)
                    for stream in _streams("kafka.yaml"))
    raws = _mixed(3)
    taken, laned = _check_same(streams, raws)
    stream = laned.streams["demo"]
    assert stream.join.evicted_total > 0 and stream.join.expired_total > 0
    assert stream.weights_version > 100
    assert 0 < taken < len(raws)


def _record(**fields) -> bytes:
    return orjson.dumps({"schema": 1, "stream": "demo", **fields})


_OUTPUTS = {"logistic_regression": [0.4, 0.6], "naive_bayes": [0.5, 0.5],
            "hoeffding_tree": [0.9, 0.1]}


def _unusual() -> list[tuple[bytes, bool]]:
    """Records the lane must take (``True``) or leave to Python (``False``)."""
    outputs = orjson.dumps(_OUTPUTS)
    return [
        (_record(id="a", ts=10.0, outputs=_OUTPUTS), True),
        (b' { "schema" : 1 ,\n"stream":"demo", "ts":11, "id":"b",\t"outputs" : '
         + outputs + b" } \r\n", True),  # spaces, an integer ts, another order
        (_record(id="c", ts=1.2e1, outputs={"hoeffding_tree": [1, 0], "naive_bayes": [0, 1],
                                           "logistic_regression": [0.25, 0.75]}), True),
        (_record(id="a", ts=12.0, label=1), True),
        (b'{"schema":1,"stream":"demo","id":"b","ts":12.5,"label":-0}', True),
        (_record(id="\u00e9t\u00e9", ts=13.0, outputs=_OUTPUTS), True),  # raw UTF-8
        (_record(id="a\x7fb/<>\u2028", ts=13.0, outputs=_OUTPUTS), True),  # none escaped
        (b'{"schema":1,"stream":"demo","id":"\\u00e9","ts":13,"outputs":' + outputs + b"}",
         False),  # an escape
        (_record(id="d", ts=13.0, outputs=_OUTPUTS, features=[1.0]), False),
        (_record(id="e", ts=13.0, outputs=_OUTPUTS, extra=1), False),
        (b'{"schema":1.0,"stream":"demo","id":"f","ts":13,"outputs":' + outputs + b"}",
         False),
        (b'{"schema":1,"stream":"demo","id":"g","ts":13,"ts":14,"outputs":' + outputs + b"}",
         False),  # a duplicate key
        (b'{"schema":1,"stream":"demo","id":"h","ts":13,"outputs":{"logistic_regression":'
         b'[0.4,0.6],"logistic_regression":[0.4,0.6],"naive_bayes":[0.5,0.5],'
         b'"hoeffding_tree":[0.9,0.1]}}', False),
        (_record(id="c", ts=14.0, label=1.0), False),  # a float label
        (_record(id="c", ts=14.0, label=2), False),  # not a class
        (_record(id="nobody", ts=14.0, label=0), False),
        (_record(id="a2", ts=14.0, outputs={**_OUTPUTS, "naive_bayes": [0.7, 0.7]}),
         True),  # the chain refuses it: a dead letter from the lane
        (_record(id="a3", ts=14.0, outputs={**_OUTPUTS, "naive_bayes": [-0.5, 1.5]}), True),
        (b'{"schema":1,"stream":"demo","id":"i","ts":14,"outputs":{"logistic_regression":'
         b'[0.40000000000000000001,0.6],"naive_bayes":[0.5,0.5],"hoeffding_tree":[0.9,0.1]}}',
         False),  # more digits than the lane reads
        (b'{"schema":1,"stream":"demo","id":"j","ts":1e300,"outputs":' + outputs + b"}",
         False),
        (b'{"schema":1,"stream":"demo","id":"k","ts":NaN,"outputs":' + outputs + b"}", False),
        (_record(id="\u00e9t\u00e9", ts=15.0, outputs=_OUTPUTS), False),  # waiting already
        (_record(id="l", ts=15.0, outputs={"logistic_regression": 0.5, "naive_bayes": 0.5,
                                          "hoeffding_tree": 0.5}), False),
        (_record(stream="other", id="m", ts=15.0, label=0), False),
        (b'{"schema":1,"stream":"demo","id":"n","ts":15,"outputs":' + outputs + b"}x", False),
        (b'\xff{"schema":1}', False),
        (b'{"schema":1,"stream":"demo","id":"\xff","ts":17,"label":0}', False),
        (b'{"schema":1,"stream":"demo","id":"\xc3","ts":17,"outputs":' + outputs + b"}",
         False),
        (_record(id="\u00e9t\u00e9", ts=16.0, label=0), True),
    ]


def test_unusual_records_are_taken_or_left_as_they_should_be():
    """Scenario: records at the edges of what the lane reads: spacing, key order,
    integers, raw UTF-8 and `-0` (taken); escapes, features, unknown fields, a float
    schema or label, duplicate keys, long numbers, huge or NaN times, a duplicate id,
    scalar outputs, an unknown stream, trailing bytes, bad UTF-8 (left to Python), and
    probabilities the chain refuses (taken: the lane writes Python's dead letter). We
    expect: each taken or left as listed, and the general path's results and state."""
    cases = _unusual()
    streams = _streams("kafka.yaml")
    pipeline = Pipeline(streams)
    lane = pipeline.record_lane()
    general = Pipeline(streams)
    for index, (raw, taken) in enumerate(cases):
        want = _one_at_a_time(general, [raw])[0]
        done = lane.process(raw, True)
        assert (done is not None) == taken, (index, raw)
        got = _one_at_a_time(pipeline, [raw])[0] if done is None else None
        if done is None:
            assert got[0] == want[0] and got[2] == want[2]
            assert _comparable(got[1]) == _comparable(want[1]), index
        elif isinstance(done[1], Outcome):
            assert _comparable(done[1]) == _comparable(want[1]), index
            assert done[1].dead_letters[0].reason == "invalid_outputs"
        else:
            assert done[0] == ("demo", want[0]) and done[1] == want[2][0], index
            assert _plain(want[1], want[0]), index
    assert pipeline.invalid == general.invalid
    assert dumps_state(pipeline.state_dict()) == dumps_state(general.state_dict())


def test_the_lane_writes_the_adapted_record_only_when_asked():
    """Scenario: the same prediction through two pipelines, adapted wanted and not. We
    expect: the encoded adapted record in one, ``None`` in the other, the same state."""
    raw = _record(id="a", ts=10.0, outputs=_OUTPUTS)
    wanted, unwanted = Pipeline(_streams("kafka.yaml")), Pipeline(_streams("kafka.yaml"))
    key, adapted = wanted.record_lane().process(raw, True)
    assert key == ("demo", "prediction") and orjson.loads(adapted)["id"] == "a"
    assert unwanted.record_lane().process(raw, False) == (("demo", "prediction"), None)
    assert dumps_state(wanted.state_dict()) == dumps_state(unwanted.state_dict())


def test_streams_the_lane_cannot_take_whole_have_none():
    """Scenario: a regression stream (the lane reads classification streams only) beside
    the Kafka config's stream, then alone. We expect: the lane takes the classification
    stream's records and leaves the regression stream's to Python; alone, no lane."""
    regression = StreamConfig(name="r", task="regression", n_classes=None,
                              models=("a", "b"), adapters=({"type": "Hedge"},))
    pipeline = Pipeline([*_streams("kafka.yaml"), regression])
    lane = pipeline.record_lane()
    assert lane.process(_record(id="x", ts=1.0, outputs=_OUTPUTS), False) is not None
    raw = orjson.dumps({"schema": 1, "stream": "r", "id": "x", "ts": 1.0,
                        "outputs": {"a": 0.5, "b": 1.5}})
    assert lane.process(raw, False) is None
    assert Pipeline([regression]).record_lane() is None


def _random_doubles(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values = []
    while len(values) < count:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    return values


def test_floats_are_written_as_orjson_writes_them():
    """Scenario: the lane writes the adapted record's numbers itself. We expect: the text
    orjson writes for each of 200,000 random doubles (every exponent), probabilities,
    timestamps and the edges of orjson's switch between notations."""
    rng = random.Random(7)
    edges = [0.0, -0.0, 1.0, 0.1, 1e-5, 1e-6, 9.999999999999999e-6, 1e15, 1e16,
             9999999999999998.0, 1234567890123456.8, 5e-324, 2.2250738585072014e-308,
             1.7976931348623157e308, 0.30000000000000004, 1750000000.0, 1750000001.635]
    values = (edges + [-v for v in edges] + _random_doubles(200_000, 1)
              + [rng.random() for _ in range(50_000)]
              + [1.75e9 + rng.random() * 1e6 for _ in range(20_000)]
              + [rng.random() * 10.0 ** rng.randint(-8, 18) for _ in range(50_000)])
    for value in values:
        assert _native.json_float(value) == orjson.dumps(value).decode(), repr(value)


@pytest.mark.parametrize("config", ["kafka.yaml", "demo.yaml"])
def test_a_restored_stream_goes_on_through_the_lane_as_an_uninterrupted_run(config):
    """Scenario: half of a stream through the lane, a snapshot of that state (through
    its JSON text), the rest through the lane in a fresh pipeline that loaded it. We
    expect: the second half's results and the final state equal one uninterrupted run of
    the general path."""
    raws = _mixed(4)
    half = len(raws) // 2
    general = Pipeline(_streams(config))
    expected = _one_at_a_time(general, raws)
    first = Pipeline(_streams(config))
    _through_lane(first, raws[:half])
    restored = Pipeline(_streams(config))
    restored.load_state_dict(loads_state(dumps_state(first.state_dict())))
    got, taken = _through_lane(restored, raws[half:])
    assert taken > 0.9 * (len(raws) - half)
    for index, ((kind, outcome, encoded), (want_kind, want, want_encoded)) in enumerate(
            zip(got, expected[half:], strict=True)):
        assert kind == want_kind and encoded == want_encoded, index
        if outcome is None:
            assert _plain(want, kind), index
        else:
            assert _comparable(outcome) == _comparable(want), index
    assert restored.summary() == general.summary()
    assert dumps_state(restored.state_dict()) == dumps_state(general.state_dict())


def test_a_wrapped_process_sees_every_record():
    """Scenario: ``run --report``'s recorder wraps the pipeline's ``process`` (a lane built
    before it was installed included). We expect: no lane while it is wrapped, so the
    recorder sees every record; the lane again once the wrapper is gone."""
    from streamweights.evaluation.trace import TraceRecorder

    pipeline = Pipeline(_streams("kafka.yaml"))
    assert pipeline.record_lane() is not None
    recorder = TraceRecorder(pipeline).install()
    assert pipeline.record_lane() is None
    raws = list(_replay(200))
    _one_at_a_time(pipeline, raws)
    assert recorder.records == len(raws)
    del pipeline.process
    assert pipeline.record_lane() is not None


def test_a_pipeline_with_a_lane_is_freed():
    """Scenario: a pipeline builds its lane and is dropped. We expect: it is collected
    (the lane holds it weakly; a cycle through a native object would never be)."""
    import gc
    import weakref

    pipeline = Pipeline(_streams("demo.yaml"))
    pipeline.record_lane().process(_record(id="a", ts=1.0, outputs=_OUTPUTS), True)
    gone = weakref.ref(pipeline)
    del pipeline
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize(("literal", "taken"), [
    ("0.40000000000000001", True),  # 17 significant digits
    ("0.400000000000000001", False),  # 18
    ("0.00040000000000000001", True),  # 17 after the leading zeros
    ("0.000400000000000000001", False),  # 18 after them
    ("4.0000000000000001e-1", True),
    ("40.000000000000001e-2", True),  # 17, the point inside them
    ("400.000000000000001e-3", False),  # 18
    ("0.0", True),
    ("0e0", True),
    ("00.4", False),  # a leading zero: not JSON
])
def test_the_lane_reads_numbers_up_to_17_significant_digits(literal, taken):
    """Scenario: a prediction whose first probability is written with a given number of
    significant digits (leading zeros, a point inside them, exponents). We expect: the
    lane takes it when the literal has at most 17 significant digits (its value is then
    certainly orjson's) and leaves it to Python otherwise or when it is not JSON."""
    pipeline = Pipeline(_streams("kafka.yaml"))
    lane = pipeline.record_lane()
    raw = (b'{"schema":1,"stream":"demo","id":"x","ts":1,"outputs":{"logistic_regression":['
           + literal.encode() + b',0.6],"naive_bayes":[0.5,0.5],"hoeffding_tree":[0.9,0.1]}}')
    assert (lane.process(raw, True) is not None) == taken
