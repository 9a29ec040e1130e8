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

import time
from collections.abc import Callable
from typing import Any


class TransactionStuckError(RuntimeError):
    """A transactional request got no answer in time, or a committed cycle's record
    was not delivered: the producer cannot be trusted with the next cycle."""


#: Each public producer call and the transaction manager call it starts with.
_STARTS = {"commit_transaction": "begin_commit", "abort_transaction": "begin_abort",
           "send_offsets_to_transaction": "send_offsets_to_transaction"}


def _call(producer: Any, name: str, timeout: float, *args: Any) -> None:
    """``producer.<name>(*args)``, waiting at most ``timeout`` s for its answer."""
    start = getattr(getattr(producer, "_transaction_manager", None), _STARTS[name], None)
    sender = getattr(producer, "_sender", None)
    if start is None or sender is None:  # not the client this was written against
        getattr(producer, name)(*args)
        return
    request = start(*args)
    sender.wakeup()
    if not request.wait(timeout_ms=timeout * 1000):
        raise TransactionStuckError(f"kafka: {name} got no answer in {timeout:.0f}s")


def send_offsets(producer: Any, offsets: dict[Any, Any], group: Any, timeout: float) -> None:
    """``producer.send_offsets_to_transaction(offsets, group)``, at most ``timeout`` s."""
    _call(producer, "send_offsets_to_transaction", timeout, offsets, group)


def commit(producer: Any, timeout: float) -> None:
    """``producer.commit_transaction()``, at most ``timeout`` s."""
    _call(producer, "commit_transaction", timeout)


def abort(producer: Any, timeout: float) -> None:
    """``producer.abort_transaction()``, at most ``timeout`` s."""
    _call(producer, "abort_transaction", timeout)


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


class InFlightCommit:
    """One cycle's commit (its offsets, then ``commit_transaction``, then the check that
    every record of the cycle was delivered) on a thread of its own.

    The calls wait on the broker (two to four round trips and the transaction markers,
    5-40 ms here), during which the replica's thread can go on decoding and adapting the
    next records, as long as it does not touch the producer: the runtime holds what those
    records write until :meth:`wait` says the commit is done and the next transaction has
    begun (``KafkaRuntime._settle``). The thread only waits; all bookkeeping stays on the
    caller's thread."""

    def __init__(self, producer: Any, offsets: dict[Any, Any], group: Any,
                 sent: list[Any], timeout: float, released: dict[Any, int],
                 observe: Callable[[str, float], None] | None = None) -> None:
        import threading

        self.released = released
        self.error: Exception | None = None
        #: Set by the thread as its last step: read on every record sent while the
        #: commit is in flight, where asking the thread ``is_alive()`` cost ~1-4 µs.
        self.answered = False
        #: ``observe(step, seconds)`` for each step that got its answer: ``offsets``
        #: (into the transaction), ``commit`` (commit_transaction); the metrics'
        #: histogram, called from this thread.
        self._observe = observe
        self._thread = threading.Thread(
            target=self._run, args=(producer, offsets, group, sent, timeout),
            name="streamweights-commit", daemon=True)
        self._thread.start()

    def _timed(self, step: str, call: Callable[..., None], *args: Any) -> None:
        began = time.perf_counter()
        call(*args)
        if self._observe is not None:
            self._observe(step, time.perf_counter() - began)

    def _run(self, producer: Any, offsets: dict[Any, Any], group: Any, sent: list[Any],
             timeout: float) -> None:
        try:
            if offsets:
                self._timed("offsets", send_offsets, producer, offsets, group, timeout)
            self._timed("commit", commit, producer, timeout)
            check_delivered(sent)
        except Exception as error:  # reported to the caller's thread by wait()
            self.error = error
        finally:
            self.answered = True

    @property
    def done(self) -> bool:
        """The commit has an answer (success or :attr:`error`); :meth:`wait` then returns
        at once."""
        return self.answered

    def wait(self) -> Exception | None:
        """Block until the commit has an answer; its error, or ``None`` if it committed.
        (The calls are bounded by ``timeout`` each, so this is too.)"""
        self._thread.join()
        return self.error
