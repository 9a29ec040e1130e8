"""Event time beyond the stream's skew limit (issue 12, Why 3): one far-future ts is
refused and changes nothing; a stream whose time really moved on is not refused for ever;
the Kafka merge does not hold a partition back behind such a record."""

from __future__ import annotations

import orjson

from streamweights import _native
from streamweights.config import parse_config
from streamweights.events import Label, Prediction
from streamweights.pipeline import SKEW_CONFIRMATIONS, Pipeline
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS

OUTPUTS = {"a": [0.3, 0.7], "b": [0.6, 0.4]}


def _pipeline(skew: float = 100.0) -> Pipeline:
    document = {"source": {"kind": "jsonl", "path": "-"}, "streams": [{
        "name": "s", "task": "classification", "classes": 2, "models": ["a", "b"],
        "join": {"ttl_seconds": 50, "max_event_time_skew_seconds": skew},
        "publish": {"every_labels": 3, "every_seconds": 10}}]}
    return Pipeline(parse_config(document).streams)


def _feed(pipeline: Pipeline, records) -> list[str]:
    reasons = []
    for record in records:
        outcome = pipeline.process(record)
        reasons.extend(letter.reason for letter in outcome.dead_letters)
    return reasons


def _records(start: float, count: int, prefix: str = "e"):
    for i in range(count):
        yield Prediction("s", f"{prefix}{i}", start + i, OUTPUTS)
        yield Label("s", f"{prefix}{i}", start + i + 0.5, i % 2)


def test_one_far_future_record_is_refused_and_changes_nothing():
    clean, dirty = _pipeline(), _pipeline()
    records = list(_records(1000.0, 40))
    assert _feed(clean, records) == []
    future = Prediction("s", "future", 1e308, OUTPUTS)
    assert _feed(dirty, [*records[:31], future, *records[31:]]) == ["event_time_skew"]
    assert dirty.summary()["streams"] == clean.summary()["streams"]
    state, reference = dirty.state_dict(), clean.state_dict()
    assert state["streams"]["s"]["skew_count"] == 1
    state["streams"]["s"]["skew_anchor"] = None
    state["streams"]["s"]["skew_count"] = 0
    numpy = orjson.OPT_SERIALIZE_NUMPY
    assert orjson.dumps(state["streams"]["s"], option=numpy) == orjson.dumps(
        reference["streams"]["s"], option=numpy)


def test_a_stream_whose_time_moved_on_is_accepted_after_agreeing_records():
    """A pause longer than the limit: the first records after it are refused (counted),
    then the stream goes on; it is not refused for ever."""
    pipeline = _pipeline(skew=100.0)
    before = list(_records(1000.0, 5))
    after = list(_records(10_000.0, 10, prefix="late"))
    reasons = _feed(pipeline, before + after)
    # The first prediction after the pause and its label are refused; the third
    # agreeing record (the next prediction) moves the stream on.
    assert SKEW_CONFIRMATIONS == 3
    assert reasons == ["event_time_skew"] * 2
    stream = pipeline.streams["s"]
    assert stream.latest_ts >= 10_000.0
    assert (stream.predictions, stream.labels) == (14, 14)


def test_skew_state_survives_a_snapshot():
    pipeline = _pipeline()
    _feed(pipeline, [*_records(1000.0, 3), Prediction("s", "f", 1e9, OUTPUTS)])
    restored = _pipeline()
    restored.load_state_dict(pipeline.state_dict())
    assert (restored.streams["s"].skew_anchor, restored.streams["s"].skew_count) == (1e9, 1)
    old = pipeline.state_dict()
    del old["streams"]["s"]["skew_anchor"], old["streams"]["s"]["skew_count"]
    restored.load_state_dict(old)  # snapshots from before the field load
    assert restored.streams["s"].skew_count == 0


def test_kafka_merge_releases_a_far_future_record_in_place():
    """Merged at 1e308 the record would wait for the labels partition to run dry, and
    every prediction behind it would be released after its own label."""
    merges = _native.TaskMerges()
    for side, offset, ts, raw in [(PREDICTIONS, 0, 10.0, b"p0"), (PREDICTIONS, 1, 1e308, b"future"),
                                  (PREDICTIONS, 2, 11.0, b"p1"), (LABELS, 0, 10.5, b"l0"),
                                  (LABELS, 1, 11.5, b"l1")]:
        merges.add(0, side, offset, ts, raw, 100.0)
    assert merges.release(lambda number: (True, False)) == 5
    order = [merges.next_record() for _ in range(5)]
    assert order == [b"p0", b"future", b"l0", b"p1", b"l1"]
