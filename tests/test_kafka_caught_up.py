"""A bounded Kafka source never takes a partition as read to its end before the end
offset it recorded at start, whatever high watermark a fetch reports (a broker that
restarts can report one recovered from its checkpoint file, below records that exist)."""

from __future__ import annotations

from kafka import TopicPartition

from streamweights.runtime.kafka_source import KafkaSource


class _Readings:
    """The two readings ``_caught_up`` takes from a consumer, as plain numbers."""

    def __init__(self, highwater: dict, position: dict) -> None:
        self._highwater, self._position = highwater, position

    def highwater(self, tp: TopicPartition) -> int:
        return self._highwater[tp]

    def position(self, tp: TopicPartition, timeout_ms: int = 0) -> int:
        return self._position[tp]


def _source(stop_at_end: bool) -> KafkaSource:
    source = KafkaSource("localhost:1", "predictions", "labels", group_id="g",
                         stop_at_end=stop_at_end)
    source._client_drained = True
    return source


def test_a_stale_high_watermark_does_not_end_a_bounded_partition():
    """Scenario: task 0's labels partition is at offset 40, its fetch reports a high
    watermark of 40, but the end recorded at start is 100 (a restarted broker's stale
    watermark); the predictions partition is truly at its end (100 of 100).
    We expect: bounded, only the predictions partition is passable; without a recorded
    end (live mode) the watermark is all there is and both are."""
    predictions, labels = TopicPartition("predictions", 0), TopicPartition("labels", 0)
    readings = _Readings({predictions: 100, labels: 40}, {predictions: 100, labels: 40})
    bounded = _source(stop_at_end=True)
    bounded.consumer = readings
    bounded._end = {predictions: 100, labels: 100}
    assert bounded._caught_up(0) == (True, False)
    live = _source(stop_at_end=False)
    live.consumer = readings
    assert live._caught_up(0) == (True, True)
    readings._position[labels] = readings._highwater[labels] = 100  # really at its end
    assert bounded._caught_up(0) == (True, True)


def test_a_bounded_partition_at_its_end_is_passable_before_the_client_is_drained():
    """Scenario: task 0's predictions partition is fetched to the end recorded at start
    (100 of 100), its labels partition is at 40 of 100, and the last poll returned a full
    ``max_poll_records`` (the client may hold more records, so no high watermark is
    trusted). We expect: bounded, the predictions partition is passable at once (it brings
    nothing more before the bound: its labels need not wait for an emptier poll) and the
    labels one is not; live, neither is until a poll drains the client; bounded again with
    both at their ends, both are, as before."""
    predictions, labels = TopicPartition("predictions", 0), TopicPartition("labels", 0)
    readings = _Readings({predictions: 100, labels: 100}, {predictions: 100, labels: 40})
    bounded = _source(stop_at_end=True)
    bounded.consumer = readings
    bounded._end = {predictions: 100, labels: 100}
    bounded._client_drained = False
    assert bounded._passable_of(0) == (True, False)
    assert not bounded._drained(0)
    live = _source(stop_at_end=False)
    live.consumer = readings
    live._client_drained = False
    assert live._passable_of(0) == (False, False)
    readings._position[labels] = 100
    bounded._passable.clear()  # (worked out once per fetch)
    assert bounded._passable_of(0) == (True, True)
    assert bounded._drained(0)
