"""The batch entry point: ``Pipeline.process_many`` over runs of records gives what feeding
the same records one at a time gives (decode -> process -> encode), byte for byte:
outputs, dead letters with their reasons and messages, counters and the whole state,
whatever the run boundaries (restart and batch-boundary determinism depend on it)."""

from __future__ import annotations

import functools
import pathlib
import random
from typing import Any

import orjson
import pytest

from streamweights import events
from streamweights.adapters import dumps_state
from streamweights.config import SourceConfig, StreamConfig, load_config
from streamweights.events import RecordError
from streamweights.pipeline import Outcome, Pipeline
from streamweights.runtime.replay import ReplayStream
from tests import fuzzing

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@functools.cache
def _streams(name: str) -> tuple[StreamConfig, ...]:
    return tuple(load_config(CONFIGS / name).streams)


@functools.cache
def _replay(n_events: int) -> tuple[bytes, ...]:
    """Raw records of a replay of the demo scenario (stream ``demo``)."""
    source = ReplayStream(SourceConfig(scenario="agrawal-recurring", events=n_events,
                                       stream="demo"))
    return tuple(raw for _, raw in source.records())


def _switching(n_events: int, seed: int, start: float) -> tuple[bytes, ...]:
    """A stream whose best model turns into the worst half way (labels five records
    late; event times from ``start`` on): the chain's drift memory confirms a drift and
    the stream reacts."""
    rng = random.Random(seed)
    raws: list[bytes] = []
    waiting: list[tuple[str, int]] = []
    for index in range(n_events):
        label = rng.randrange(2)
        right = 0.9 if index < n_events // 2 else 0.1
        good = right if label == 1 else 1.0 - right
        noise = rng.random()
        raws.append(orjson.dumps({"schema": 1, "stream": "demo", "id": f"s-{index}",
                                  "ts": start + index, "outputs": {
                                      "logistic_regression": [1.0 - good, good],
                                      "naive_bayes": [1.0 - noise, noise],
                                      "hoeffding_tree": [0.5, 0.5]}}))
        waiting.append((f"s-{index}", label))
        if len(waiting) > 5:
            record_id, value = waiting.pop(0)
            raws.append(orjson.dumps({"schema": 1, "stream": "demo", "id": record_id,
                                      "ts": start + index + 0.5, "label": value}))
    return tuple(raws)


def _with_bad_records(raws: tuple[bytes, ...], originals: tuple[bytes, ...],
                      seed: int) -> list[bytes]:
    """``raws`` with bad records mixed in at random places: fuzzed and duplicate copies
    of ``originals``, labels nobody waits for, an unknown stream, wrong shapes, and
    far-future event times near the end (three agreeing ones move the stream's time on,
    which expires every waiting prediction)."""
    rng = random.Random(seed)
    mixed = list(raws)
    bad: list[bytes] = []
    head = b'{"schema":1,"stream":"demo",'
    outputs = (b'{"logistic_regression":[0.4,0.6],"naive_bayes":[0.5,0.5],'
               b'"hoeffding_tree":[0.9,0.1]}')
    for index in range(120):
        draw = rng.random()
        original = rng.choice(originals)
        if draw < 0.4:
            bad.append(fuzzing.mutate(original, rng))
        elif draw < 0.55:
            bad.append(original)  # a duplicate prediction / a label already used
        elif draw < 0.65:
            bad.append(head + b'"id":"nobody-%d","ts":1.0,"label":1}' % index)
        elif draw < 0.75:
            bad.append(b'{"schema":1,"stream":"elsewhere","id":"x","ts":1.0,"label":0}')
        elif draw < 0.85:
            bad.append(head + b'"id":"shape-%d","ts":1.0,"outputs":{"logistic_regression"'
                       b':[1.0],"naive_bayes":[0.5,0.5],"hoeffding_tree":[0.9,0.1]}}' % index)
        else:
            bad.append(head + b'"id":"future-%d","ts":1e12,"outputs":' % index + outputs
                       + b"}")
    future = [raw for raw in bad if b'"ts":1e12' in raw]
    for raw in bad:  # (far-future ones near the end: the stream's time jumps there)
        low = len(mixed) - 200 if raw in future else 0
        mixed.insert(rng.randrange(low, len(mixed) + 1), raw)
    return mixed


def _one_at_a_time(pipeline: Pipeline, raws: list[bytes]) -> list[tuple[str, Any, Any]]:
    """What the service's per-record path does: decode, process, encode."""
    results = []
    for raw in raws:
        try:
            record = events.decode(raw)
        except RecordError as error:
            results.append(("invalid", pipeline.reject(error, raw), (None, [])))
            continue
        kind = "prediction" if isinstance(record, events.Prediction) else "label"
        outcome = pipeline.process(record)
        results.append((kind, outcome, (
            None if outcome.adapted is None else events.encode(outcome.adapted),
            [events.encode(weights) for weights in outcome.weights])))
    return results


def _in_runs(pipeline: Pipeline, raws: list[bytes], rng: random.Random
             ) -> list[tuple[str, Any, Any]]:
    """``process_many`` over runs of random lengths (1 record to a few hundred)."""
    results: list[tuple[str, Any, Any]] = []
    start = 0
    while start < len(raws):
        length = rng.choice([1, 2, 3, 7, 16, 64, 256, 1000])
        for kind, outcome, encoded, stamp in pipeline.process_many(raws[start:start + length]):
            assert stamp == 0.0  # no clock given: the pipeline reads none
            results.append((kind, outcome, encoded))
        start += length
    return results


def _comparable(outcome: Outcome) -> tuple:
    """Everything an outcome tells the runtime, as plain values."""
    return (outcome.stream, outcome.learned, outcome.drift,
            [(d.reason, d.error, d.raw, d.stream, d.id) for d in outcome.dead_letters],
            [(p.id, p.ts) for p in outcome.expired], [(p.id, p.ts) for p in outcome.evicted],
            None if outcome.adapted is None else events.encode(outcome.adapted),
            [events.encode(weights) for weights in outcome.weights])


def _check_same(streams: tuple[StreamConfig, ...], raws: list[bytes], seed: int) -> None:
    single = Pipeline(streams)
    expected = _one_at_a_time(single, raws)
    batched = Pipeline(streams)
    got = _in_runs(batched, raws, random.Random(seed))
    assert len(got) == len(expected) == len(raws)
    for index, ((kind, outcome, encoded), (want_kind, want, want_encoded)) in enumerate(
            zip(got, expected, strict=True)):
        assert kind == want_kind, index
        assert encoded == want_encoded, index
        assert _comparable(outcome) == _comparable(want), index
    assert batched.invalid == single.invalid
    assert dumps_state(batched.state_dict()) == dumps_state(single.state_dict())
    assert batched.summary() == single.summary()


@pytest.mark.parametrize("config", ["demo.yaml", "kafka.yaml"])
@pytest.mark.parametrize("seed", [1, 2])
def test_runs_of_any_length_equal_one_record_at_a_time(config, seed):
    """Scenario: the default chain (portfolio, memory, conformal sets) and the Kafka
    config's chain are fed a replay, then a stream whose best model turns bad (drift
    reactions), with bad records mixed in, once record by record and once through
    ``process_many`` in runs of random lengths. We expect: the same kinds, the same
    encoded outputs and dead letters, the same counters and the same state bytes."""
    replay = _replay(1_500)
    after = max(orjson.loads(raw)["ts"] for raw in replay) + 1.0
    raws = _with_bad_records(replay + _switching(3_000, seed, after), replay, seed)
    reasons = set()
    for raw in raws:  # the mix really holds the bad records it means to
        try:
            record = events.decode(raw)
        except RecordError as error:
            reasons.add(error.reason)
            continue
        reasons.update(d.reason for d in Pipeline(_streams(config)).process(record).dead_letters)
    _check_same(_streams(config), raws, seed)
    single = Pipeline(_streams(config))
    _one_at_a_time(single, raws)
    assert {"duplicate_id", "unmatched_label", "unknown_stream", "event_time_skew"} \
        <= set(single.invalid), single.invalid
    assert single.streams["demo"].drift_total >= 1  # the reaction path ran
    assert single.streams["demo"].weights_version >= 5


def test_runs_equal_one_at_a_time_on_fuzzed_input_over_several_streams():
    """Scenario: the fuzz mix (mutated, generated and random records) over four streams,
    classification and regression. We expect: runs give exactly the per-record results."""
    rng = random.Random(5)
    raws = [fuzzing.random_input(rng, index) for index in range(4_000)]
    streams = tuple(fuzzing.new_pipeline().streams[name].config
                    for name in fuzzing.new_pipeline().streams)
    _check_same(streams, raws, 11)


def test_an_unexpected_error_is_handed_back_and_the_run_goes_on():
    """Scenario: processing one record raises something that is not a contract breach (a
    bug). We expect: that record comes back as ``("error", None, ("process", error,
    record))``, nothing is counted for it, and the records after it in the same run are
    processed as usual."""
    raws = list(_replay(200)[:60])
    pipeline = Pipeline(_streams("kafka.yaml"))
    stream = pipeline.streams["demo"]
    original = stream.on_prediction
    broken = events.decode(raws[3]).id

    def on_prediction(record):
        if record.id == broken:
            raise ZeroDivisionError("boom")
        return original(record)

    stream.on_prediction = on_prediction
    results = pipeline.process_many(raws, clock=iter(range(1, 100)).__next__)
    kind, outcome, (stage, error, record), stamp = results[3]
    assert (kind, outcome, stage, type(error), record.id, stamp) == \
        ("error", None, "process", ZeroDivisionError, broken, 4)
    assert [r[3] for r in results] == list(range(1, 61))  # one clock stamp per record
    assert pipeline.invalid == {}
    assert results[4][0] in ("prediction", "label") and results[4][1].dead_letters == []
    undecodable = pipeline.process_many([b"{not json"])
    assert undecodable[0][0] == "invalid"
    assert undecodable[0][1].dead_letters[0].reason == "malformed_json"
