"""The runtime's checks on kafka-python's transactional producer
(``runtime/transaction_calls.py``): a committed cycle whose sends did not all succeed is
refused (kafka-python 3.0 can report such a commit as done)."""

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
