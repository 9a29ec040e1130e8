"""A classification stream on the native chain keeps the core's flat record of each
served prediction whole in the join and learns its label in one core call
(``_native.learn_served``: chain, scores, conformal layers, stage evidence). These tests
hold that path to the general one, bit for bit: the same outputs, dead letters, drift
reactions and state as the per-stage path, and a snapshot whose waiting predictions
were written by the general path (trace arrays, as every earlier version wrote them)
goes on exactly as an uninterrupted run."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest

from streamweights import _native, events
from streamweights.adapters import dumps_state, loads_state
from streamweights.config import StreamConfig
from streamweights.pipeline import Pipeline
from tests.test_pipeline_batch import (
    _comparable,
    _one_at_a_time,
    _replay,
    _streams,
    _switching,
    _with_bad_records,
)


def _mixed_records(seed: int) -> list[bytes]:
    """The demo replay, then a stream whose best model turns bad (drift reactions),
    with bad records mixed in."""
    replay = _replay(1_500)
    after = max(orjson.loads(raw)["ts"] for raw in replay) + 1.0
    return _with_bad_records(replay + _switching(3_000, seed, after), replay, seed)


def _pipeline(streams: tuple[StreamConfig, ...], path: str) -> Pipeline:
    """``fused``: as built; ``split``: flat records in the join, labels through the
    general path; ``general``: trace arrays in the join (the path before flat records)."""
    pipeline = Pipeline(streams)
    for stream in pipeline.streams.values():
        assert stream._fused_labels, "these configs are meant to take the flat path"
        if path in ("split", "general"):
            stream._fused_labels = False
        if path == "general":
            stream._rows_path = False
    return pipeline


def _without_join_entries(state: dict) -> dict:
    state = copy.deepcopy(state)
    for stream in state["streams"].values():
        stream["join"].pop("entries")
    return state


def _entries(pipeline: Pipeline) -> list[tuple[str, float]]:
    return [(pending.id, pending.ts) for stream in pipeline.streams.values()
            for pending in stream.join.waiting()]


@pytest.mark.parametrize("config", ["demo.yaml", "kafka.yaml"])
def test_flat_records_give_what_the_general_path_gives(config):
    """Scenario: the default chain (portfolio, memory, conformal sets) and the Kafka
    config's chain, fed a replay, a drifting stream and bad records, three ways: the
    one-call label path, flat records learnt through the general path, and the general
    path throughout. We expect: the same outcomes and encoded outputs record by record,
    the same counters and the same state (the join's entries differ only in form)."""
    raws = _mixed_records(1)
    runs = {}
    for path in ("fused", "split", "general"):
        pipeline = _pipeline(_streams(config), path)
        runs[path] = (pipeline, _one_at_a_time(pipeline, raws))
    fused, expected = runs["fused"]
    assert fused.streams["demo"].drift_total >= 1  # the reaction path ran
    for path in ("split", "general"):
        pipeline, got = runs[path]
        for index, ((kind, outcome, encoded), (want_kind, want, want_encoded)) in \
                enumerate(zip(got, expected, strict=True)):
            assert kind == want_kind, (path, index)
            assert encoded == want_encoded, (path, index)
            assert _comparable(outcome) == _comparable(want), (path, index)
        assert pipeline.invalid == fused.invalid
        assert pipeline.summary() == fused.summary()
        assert dumps_state(_without_join_entries(pipeline.state_dict())) == \
            dumps_state(_without_join_entries(fused.state_dict()))
        assert _entries(pipeline) == _entries(fused)
    assert dumps_state(runs["split"][0].state_dict()) == dumps_state(fused.state_dict())


@pytest.mark.parametrize("config", ["demo.yaml", "kafka.yaml"])
def test_a_snapshot_of_trace_entries_goes_on_as_an_uninterrupted_run(config):
    """Scenario: a stream runs the general path (its waiting predictions are trace
    arrays, as snapshots of earlier versions hold them) to half way; its snapshot is
    loaded into a pipeline on the flat path, which takes the rest. We expect: the second
    half's outputs and the final state equal those of one uninterrupted flat-path run
    (labels of old entries take the general path, new entries the flat one)."""
    raws = _mixed_records(2)
    half = len(raws) // 2
    reference = _pipeline(_streams(config), "fused")
    expected = _one_at_a_time(reference, raws)
    before = _pipeline(_streams(config), "general")
    _one_at_a_time(before, raws[:half])
    waiting = [pending.payload for pending in before.streams["demo"].join.waiting()]
    assert waiting and all("trace" in payload for payload in waiting)
    restored = _pipeline(_streams(config), "fused")
    restored.load_state_dict(loads_state(dumps_state(before.state_dict())))
    got = _one_at_a_time(restored, raws[half:])
    for index, ((kind, outcome, encoded), (want_kind, want, want_encoded)) in enumerate(
            zip(got, expected[half:], strict=True)):
        assert kind == want_kind, index
        assert encoded == want_encoded, index
        assert _comparable(outcome) == _comparable(want), index
    assert restored.summary() == reference.summary()
    assert dumps_state(_without_join_entries(restored.state_dict())) == \
        dumps_state(_without_join_entries(reference.state_dict()))


def test_learn_served_refuses_what_it_cannot_use_and_changes_nothing():
    """Scenario: ``learn_served`` is given a buffer of the wrong length, a label outside
    the classes, and scores that do not match the trace. We expect: ``None`` (the
    general path decides) for the first two and a ``ValueError`` for the third, each
    with the chain and the scores unchanged."""
    pipeline = Pipeline(_streams("kafka.yaml"))
    stream = pipeline.streams["demo"]
    record = events.decode(_replay(50)[0])
    stream.on_prediction(record)
    buffer = stream.join.waiting()[0].payload["buffer"]
    core = stream.chain.core
    before = dumps_state(stream.state_dict())
    args = (stream._all_scores, stream._evidence_cores, stream._evidence_ranges, 1e-6)
    assert _native.learn_served(core, np.append(buffer, 0.5), 1, *args) is None
    assert _native.learn_served(core, buffer, 2, *args) is None
    with pytest.raises(ValueError, match="scores"):
        _native.learn_served(core, buffer, 1, stream._all_scores[:-1], *args[1:])
    assert dumps_state(stream.state_dict()) == before
    assert _native.learn_served(core, buffer, 1, *args) == []
    assert dumps_state(stream.state_dict()) != before
