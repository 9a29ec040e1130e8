"""A poll that raises a retriable kafka-python error (the broker restarting) is an empty
poll for the Kafka source, not the end of the replica; any other error still ends it."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import IllegalStateError, KafkaConnectionError

from streamweights.runtime.kafka_source import KafkaSource


class _Polls:
    """Plays back one outcome per ``poll`` call: an exception to raise or a result."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def poll(self, timeout_ms: int) -> dict:
        outcome = self.outcomes[self.calls]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _source(consumer: _Polls) -> KafkaSource:
    source = KafkaSource("localhost:1", "predictions", "labels", group_id="g",
                         poll_timeout_ms=1)
    source.consumer = consumer
    return source


def test_connection_refused_during_a_poll_is_an_empty_poll_and_logged_once(caplog):
    """Scenario: two polls raise ECONNREFUSED (kafka-python 3.0 refreshing metadata
    while the broker is down), the third returns a batch.
    We expect: no exception; the failed polls return None; one warning for the outage
    and one info line when polls succeed again; the batch comes through unchanged."""
    refused = KafkaConnectionError("111 ECONNREFUSED")
    batch = {"tp": ["record"]}
    source = _source(_Polls([refused, refused, batch]))
    with caplog.at_level(logging.INFO, logger="streamweights"):
        assert source._poll() is None
        assert source._poll() is None
        assert source._poll() == batch
    messages = [record.getMessage() for record in caplog.records]
    assert sum("poll failed" in message for message in messages) == 1
    assert any("succeed again after 2 failed" in message for message in messages)
    assert source._poll_failures == 0


def test_a_non_retriable_client_error_still_ends_the_poll():
    """Scenario: a poll raises an error kafka-python does not mark retriable.
    We expect: it propagates (fail-stop), as before."""
    source = _source(_Polls([IllegalStateError("consumer closed")]))
    with pytest.raises(IllegalStateError):
        source._poll()
