"""A leaner ``send`` for the replica's transactional producer (kafka-python 3.0.x): the
records of a cycle gathered into record batches built in the core, handed to the
producer's accumulator whole.

``KafkaProducer.send`` costs ~18-21 µs of Python per record on this machine, on the loop's
thread: argument checks, serializer calls, a metadata lookup, the default partitioner's
murmur2 in pure Python, two debug lines formatted whether logged or not, the
transaction's partition bookkeeping, then the accumulator, whose batch builder writes the
record a varint at a time and makes a metadata object and a future for it. A replica
publishing adapted predictions sends one record per prediction, so that was more than
the pipeline's whole work per record (``bench/kafka.py --adapted``).

For the records the runtime writes most (adapted predictions, weights versions: small
bytes keyed by stream, no headers; and, through :meth:`LeanSender.send_to`, the
changelog records a commit writes to its tasks' partitions) :class:`LeanSender` keeps,
per partition, an open batch in the core (``_native.RecordBatchBuilder``: one call per
record, the bytes kafka-python's builder writes) and hands it to the accumulator as one
``ProducerBatch`` when it is full, after every poll of the replica's consumer and before
the cycle's changelog records and commit (:meth:`LeanSender.hand_over`, which the
runtime calls then). From there the client's own sender thread drains it like any batch:
it assigns the producer id, epoch and sequence (written into the header then), sends,
retries, and fails or aborts it with the transaction. Delivery is checked per batch (its
produce future) instead of per record, so a batch stays within its topic's
``max.message.bytes`` where the runtime knows it: one the broker refused as too large
would be split by the client into batches whose answers never reach that future.

The partition is the producer's own partitioner's answer, asked once per topic, key and
partition count (the default partitioner hashes the key over the sorted partition ids,
which are ``0 .. n-1``, so its answer depends on nothing else; the count is looked at
again whenever the cycle's batches are handed over). A partition joins the open
transaction (``maybe_add_partition_to_transaction``, which also raises a failed
transaction's error, as ``send`` does) when its batch opens. What waits in an open batch
is not yet in the producer; a read_committed reader sees a cycle's records only once it
commits, which is after the hand-over, so nothing becomes visible later than before, and
the records of a cycle still reach the broker while it is open (at each poll), so a
fault mid-cycle meets the same transaction state at the broker as before. An aborted
cycle's open batches are dropped (:meth:`LeanSender.discard`, called whenever a
cycle begins). Anything else (no key, headers, a bigger record, a closed producer, a
topic without metadata yet, serializers, compression, another partitioner, a client
whose layout this was not written against) goes to ``producer.send`` as before, after
that topic's open batches are handed over, so a partition's records keep their order.
Measured (``bench/producer_send.py``: 60,000 adapted-sized records in one transaction,
send to commit, CPU of both the loop's thread and the client's sender thread): ~1.0 µs
per record against ~20 µs through ``KafkaProducer.send`` (the earlier per-record lean
path took ~9.5 µs of the loop's thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from streamweights import _native

log = logging.getLogger("streamweights.kafka")

#: Records up to this many bytes (key and value) take the lean path.
LEAN_MAX_BYTES = 64 << 10
#: What the lean path reads of kafka-python's producer (3.0.x).
_NEEDED = ("_accumulator", "_transaction_manager", "_sender", "_metadata", "_partition",
           "_closed", "config")

#: ``send(topic, value, key, headers)`` -> the client's future for a record that took
#: ``producer.send``, ``None`` for one gathered into a batch (see :meth:`LeanSender.hand_over`).
Sender = Callable[..., Any]


class _BuiltRecords:
    """What kafka-python's accumulator and sender use of a batch's ``MemoryRecordsBuilder``,
    over a batch the core built: complete when handed over (the client's own sends open
    a batch of their own after it), its header written when the sender closes it with
    the producer state it assigned."""

    __slots__ = (
        "_base_sequence",
        "_buffer",
        "_builder",
        "_producer_epoch",
        "_producer_id",
        "_transactional",
    )

    def __init__(self, builder: Any) -> None:
        self._builder = builder
        self._buffer: bytes | None = None
        self._producer_id = -1
        self._producer_epoch = -1
        self._base_sequence = -1
        self._transactional = False

    def append(self, timestamp: Any, key: Any, value: Any, headers: Any = None) -> None:
        return None  # no room: the accumulator opens a batch of its own

    def set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int,
                           is_transactional: bool) -> None:
        if self._buffer is not None:  # as the client's builder: never after close
            from kafka.errors import IllegalStateError

            raise IllegalStateError("Trying to set producer state of an already closed batch.")
        self._producer_id = producer_id
        self._producer_epoch = producer_epoch
        self._base_sequence = base_sequence
        self._transactional = bool(is_transactional)

    @property
    def producer_id(self) -> int:
        return self._producer_id

    @property
    def producer_epoch(self) -> int:
        return self._producer_epoch

    @property
    def base_sequence(self) -> int:
        return self._base_sequence

    def close(self) -> None:
        if self._buffer is None:
            self._buffer = self._builder.build(self._producer_id, self._producer_epoch,
                                               self._base_sequence, self._transactional)

    def buffer(self) -> bytes | None:
        return self._buffer

    def records(self) -> Any:
        from kafka.record.memory_records import MemoryRecords

        return MemoryRecords(self._buffer)

    def size_in_bytes(self) -> int:
        return len(self._buffer) if self._buffer is not None else self._builder.size()

    def compression_rate(self) -> float:
        return 1.0

    def is_full(self) -> bool:
        return True

    def next_offset(self) -> int:
        return self._builder.count


class _Partition:
    """One partition's open batch (``None`` until a record for it comes in a cycle) and
    the most bytes a batch for it may take."""

    __slots__ = ("batch_size", "builder", "topic_partition")

    def __init__(self, topic_partition: Any, batch_size: int) -> None:
        self.topic_partition = topic_partition
        self.batch_size = batch_size
        self.builder: Any = None


class LeanSender:
    """The runtime's way of sending output records through ``producer`` (see the module's
    docstring): :attr:`send` per record, :meth:`hand_over` before a commit,
    :meth:`discard` when a cycle begins.

    ``limits``: the ``max.message.bytes`` of the topics it writes, where known; a batch
    for such a topic stays within it (and within the producer's ``batch_size``). A batch
    the broker refused as too large would be split by the client into batches of its
    own, whose answers never reach the batch's future that delivery is checked on."""

    def __init__(self, producer: Any, limits: dict[str, int] | None = None) -> None:
        self.producer = producer
        self._limits = dict(limits or {})
        #: Produce futures of the batches handed over in this cycle.
        self._handed: list[Any] = []
        #: Every partition written to, by ``TopicPartition`` (those with an open batch
        #: have a ``builder``).
        self._partitions: dict[Any, _Partition] = {}
        reason = _unsupported(producer)
        if reason is not None:
            log.debug("lean send path not used: %s", reason)
            self.send: Sender = self._plain
            return
        self._routes: dict[tuple[str, bytes], _Partition] = {}
        self._counts: dict[str, int] = {}  # topic -> partition count the routes assume
        self._batch_size = producer._accumulator.config["batch_size"]
        self.send = self._make_send()

    def _plain(self, topic: str, value: bytes, key: bytes | None,
               headers: list[tuple[str, bytes]] | None) -> Any:
        self._hand_over_topic(topic)
        return self.producer.send(topic, value=value, key=key, headers=headers)

    def _make_send(self) -> Sender:
        producer, plain = self.producer, self._plain
        routes, route, opened = self._routes, self._route, self._open_batch
        hand_over_one = self._hand_over_one
        lean_max = LEAN_MAX_BYTES

        def send(topic: str, value: bytes, key: bytes | None,
                 headers: list[tuple[str, bytes]] | None) -> Any:
            if (headers or type(key) is not bytes or type(value) is not bytes
                    or len(key) + len(value) > lean_max or producer._closed):
                return plain(topic, value, key, headers)
            partition = routes.get((topic, key))
            if partition is None:
                partition = route(topic, key)
                if partition is None:
                    return plain(topic, value, key, headers)
            builder = partition.builder
            if builder is None:
                builder = opened(partition)
            if not builder.append(key, value):  # full: hand it over, start the next
                hand_over_one(partition)
                opened(partition).append(key, value)
            return None

        return send

    def send_to(self, topic: str, number: int, key: bytes, value: bytes | None,
                lean: bool = True) -> Any:
        """Like ``send``, to partition ``number`` of ``topic`` as the caller names it (a
        changelog record goes to its task's partition, whatever its key hashes to); a
        tombstone (``value`` ``None``) goes in the batch too, where the changelog puts it
        among a commit's records (handing the batch over at each one made batches of a
        record or two). A large record, one the caller sends with ``lean`` false, or a
        producer the lean path does not serve, goes to ``producer.send`` after that
        topic's open batches, as ``send`` does."""
        producer = self.producer
        if (not lean or self.send == self._plain or type(key) is not bytes
                or (value is not None and (type(value) is not bytes
                                           or len(key) + len(value) > LEAN_MAX_BYTES))
                or producer._closed):
            self._hand_over_topic(topic)
            return producer.send(topic, value=value, key=key, partition=number)
        # (a ``TopicPartition`` is a named tuple: the plain pair finds it)
        partition = self._partitions.get((topic, number))
        if partition is None:
            # The client sends a partition's batches only once its metadata knows the
            # partition's leader, and it asks for a topic's metadata only when ``send``
            # meets the topic: the first records take ``send``, which does.
            if number not in (producer._metadata.partitions_for_topic(topic) or ()):
                self._hand_over_topic(topic)
                return producer.send(topic, value=value, key=key, partition=number)
            partition = self._partition(topic, number)
        builder = partition.builder
        if builder is None:
            builder = self._open_batch(partition)
        if not builder.append(key, value):  # full: hand it over, start the next
            self._hand_over_one(partition)
            self._open_batch(partition).append(key, value)
        return None

    def _route(self, topic: str, key: bytes) -> _Partition | None:
        """The partition of ``key`` on ``topic`` as the producer's partitioner picks it
        (``None`` while the topic has no metadata: ``send`` waits for it)."""
        producer = self.producer
        known = producer._metadata.partitions_for_topic(topic)
        if not known:
            return None
        self._note_count(topic, len(known))
        number = producer._partition(topic, None, key, None, key, None)
        if number is None:
            return None
        partition = self._routes[(topic, key)] = self._partition(topic, number)
        return partition

    def _partition(self, topic: str, number: int) -> _Partition:
        """Partition ``number`` of ``topic`` as written to, made at its first record (its
        batches within the topic's size limit)."""
        # (a ``TopicPartition`` is a named tuple: the plain pair finds it)
        partition = self._partitions.get((topic, number))
        if partition is None:
            from kafka.structs import TopicPartition

            topic_partition = TopicPartition(topic, number)
            size = min(self._batch_size, self._limits.get(topic, self._batch_size))
            partition = self._partitions[topic_partition] = _Partition(topic_partition, size)
        return partition

    def _note_count(self, topic: str, count: int) -> None:
        """``topic`` has ``count`` partitions: if its routes were made for another count,
        hand its open batches over and drop the routes (the next records route afresh)."""
        if self._counts.setdefault(topic, count) == count:
            return
        self._hand_over_topic(topic)
        for route in [route for route in self._routes if route[0] == topic]:
            del self._routes[route]
        self._counts[topic] = count

    def _open_batch(self, partition: _Partition) -> Any:
        self.producer._transaction_manager.maybe_add_partition_to_transaction(
            partition.topic_partition)
        builder = partition.builder = _native.RecordBatchBuilder(partition.batch_size)
        return builder

    def _hand_over_one(self, partition: _Partition) -> None:
        """``partition``'s open batch into the accumulator, as ``append`` puts a new batch
        there (under the partition's lock, counted as an append in progress so an abort
        in between sees it), and the sender woken."""
        from kafka.errors import IllegalStateError
        from kafka.producer.producer_batch import ProducerBatch

        builder, partition.builder = partition.builder, None
        if builder is None or builder.count == 0:
            return
        accumulator = self.producer._accumulator
        topic_partition = partition.topic_partition
        batch = ProducerBatch(topic_partition, _BuiltRecords(builder), now=time.monotonic())
        accumulator._appends_in_progress.increment()
        try:
            with accumulator._tp_lock(topic_partition):
                if accumulator._closed:
                    raise IllegalStateError("RecordAccumulator is closed")
                accumulator._batches[topic_partition].append(batch)
                accumulator._incomplete.add(batch)
        finally:
            accumulator._appends_in_progress.decrement()
        self._handed.append(batch.produce_future)
        self.producer._sender.wakeup()

    def _hand_over_topic(self, topic: str) -> None:
        for partition in self._partitions.values():
            if partition.builder is not None and partition.topic_partition.topic == topic:
                self._hand_over_one(partition)

    def hand_over(self) -> list[Any]:
        """Hand every open batch to the producer; the produce futures of the cycle's batches
        (every one of them must succeed for the cycle to count as delivered). Also looks
        again at the partition counts the routes assume."""
        for partition in self._partitions.values():
            if partition.builder is not None:
                self._hand_over_one(partition)
        handed, self._handed = self._handed, []
        if handed:
            metadata = self.producer._metadata
            for topic in list(self._counts):
                known = metadata.partitions_for_topic(topic)
                if known:
                    self._note_count(topic, len(known))
        return handed

    def discard(self) -> None:
        """Drop the open batches (a cycle that did not commit: its records are recomputed
        after the roll-back) and forget the futures of batches handed over in it."""
        for partition in self._partitions.values():
            partition.builder = None
        self._handed = []


def lean_sender(producer: Any, limits: dict[str, int] | None = None) -> LeanSender:
    """The lean sender bound to ``producer`` (see the module's docstring and
    :class:`LeanSender` for ``limits``)."""
    return LeanSender(producer, limits)


def _unsupported(producer: Any) -> str | None:
    """Why the lean path does not apply to ``producer`` (``None``: it does)."""
    import kafka
    from kafka.partitioner.default import DefaultPartitioner

    if not kafka.__version__.startswith("3.0."):
        return f"kafka-python {kafka.__version__}, written against 3.0.x"
    missing = [name for name in _NEEDED if not hasattr(producer, name)]
    if missing:
        return f"the producer has no {', '.join(missing)}"
    config = producer.config
    if config.get("key_serializer") is not None or config.get("value_serializer") is not None:
        return "serializers are configured"
    if type(config.get("partitioner")) is not DefaultPartitioner:
        return "a partitioner other than kafka-python's default is configured"
    accumulator = producer._accumulator
    if accumulator.config.get("compression_attrs", 0) != 0:
        return "compression is configured"
    if accumulator.config.get("message_version", 2) != 2:
        return "the broker's message format is older than v2"
    manager = producer._transaction_manager
    if manager is None or not manager.is_transactional():
        return "the producer is not transactional"
    return None
