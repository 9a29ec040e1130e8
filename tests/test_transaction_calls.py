"""The runtime's checks on kafka-python's transactional producer
(``runtime/transaction_calls.py``): a committed cycle whose sends did not all succeed is
refused (kafka-python 3.0 can report such a commit as done); a commit in flight says it is
done exactly when it has its answer."""

from __future__ import annotations

import pytest
from kafka.errors import InvalidProducerEpochError
from kafka.future import Future

from streamweights.runtime.transaction_calls import TransactionStuckError, check_delivered


def _done(value=None) -> Future:
    future = Future()
    future.success(value)
    return future


def test_a_cycle_whose_sends_all_succeeded_passes():
    check_delivered([_done(1), _done(2)])
    check_delivered([])


def test_a_failed_send_is_named():
    failed = Future()
    failed.failure(InvalidProducerEpochError())
    with pytest.raises(TransactionStuckError, match=r"not delivered.*InvalidProducerEpochError"):
        check_delivered([_done(), failed, _done()])


def test_a_send_still_pending_after_the_commit_is_refused():
    with pytest.raises(TransactionStuckError, match="still pending"):
        check_delivered([_done(), Future()])


def test_an_in_flight_commit_is_done_exactly_when_it_has_an_answer(monkeypatch):
    import threading

    from streamweights.runtime import transaction_calls

    release, entered = threading.Event(), threading.Event()

    def blocked_commit(producer, timeout):
        entered.set()
        assert release.wait(10)
        raise RuntimeError("the broker said no")

    monkeypatch.setattr(transaction_calls, "commit", blocked_commit)
    cycle = transaction_calls.InFlightCommit(object(), {}, None, [], 5.0, {})
    assert entered.wait(10)
    assert not cycle.done  # still waiting on the broker
    release.set()
    error = cycle.wait()
    assert cycle.done and isinstance(error, RuntimeError) and cycle.error is error
