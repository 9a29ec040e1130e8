"""Transaction calls on kafka-python's producer that cannot hang and cannot lie.

kafka-python 3.0's ``commit_transaction`` and ``send_offsets_to_transaction`` wait for
their answer without a time limit. After a broker restart that outlived the transaction
timeout (the broker aborts the transaction and bumps the producer's epoch), the records
of the open cycle fail with ``InvalidProducerEpochError`` and the producer's I/O thread
can end up in a state it never leaves (an "invalid transition READY to READY" error,
then a busy loop). Seen in ``tests/kafka/test_kafka_survives_broker_restart.py``: the
replica waited in ``commit_transaction`` for ever; a standalone producer in the same
situation even had its commit reported as done, with the cycle's records failed.

So the runtime (1) waits for each transactional request at most ``timeout`` seconds,
through the same internal calls the public methods make, and (2) checks after a commit
that every record sent in the cycle was delivered. Either failing raises
:class:`TransactionStuckError`; the runtime then replaces the producer (whose
``init_transactions`` fences the old one and makes the broker abort what it left open)
and rolls its tasks back to what the changelog really holds. A client without these
internals gets the public, unbounded calls.
"""

from __future__ import annotations

from typing import Any


class TransactionStuckError(RuntimeError):
    """A transactional request got no answer in time, or a committed cycle's record
    was not delivered: the producer cannot be trusted with the next cycle."""


def _bounded(producer: Any, request: Any, what: str, timeout: float) -> None:
    producer._sender.wakeup()
    if not request.wait(timeout_ms=timeout * 1000):
        raise TransactionStuckError(f"kafka: {what} got no answer in {timeout:.0f}s")


def send_offsets(producer: Any, offsets: dict[Any, Any], group: Any, timeout: float) -> None:
    """``producer.send_offsets_to_transaction(offsets, group)``, at most ``timeout`` s."""
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None or not hasattr(producer, "_sender"):
        producer.send_offsets_to_transaction(offsets, group)
        return
    _bounded(producer, manager.send_offsets_to_transaction(offsets, group),
             "send_offsets_to_transaction", timeout)


def commit(producer: Any, timeout: float) -> None:
    """``producer.commit_transaction()``, at most ``timeout`` s."""
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None or not hasattr(producer, "_sender"):
        producer.commit_transaction()
        return
    _bounded(producer, manager.begin_commit(), "commit_transaction", timeout)


def abort(producer: Any, timeout: float) -> None:
    """``producer.abort_transaction()``, at most ``timeout`` s."""
    manager = getattr(producer, "_transaction_manager", None)
    if manager is None or not hasattr(producer, "_sender"):
        producer.abort_transaction()
        return
    _bounded(producer, manager.begin_abort(), "abort_transaction", timeout)


def check_delivered(futures: list[Any]) -> None:
    """Raise :class:`TransactionStuckError` unless every send of the committed cycle
    (``FutureRecordMetadata``) completed without an error; a commit flushes them all, so
    one still pending is as wrong as one failed."""
    for future in futures:
        if not future.is_done:
            raise TransactionStuckError("kafka: a record of the committed cycle is still "
                                        "pending after the commit")
        if future.failed():
            raise TransactionStuckError(f"kafka: a record of the committed cycle was not "
                                        f"delivered ({type(future.exception).__name__}: "
                                        f"{future.exception})")
