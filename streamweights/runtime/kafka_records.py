"""Fetched record batches read by the native core instead of kafka-python's Python reader.

kafka-python turns fetched bytes into records in Python, a varint at a time: ~4.7 µs per
record on this machine, as much as the service's whole pipeline per record, and the
largest single cost of a Kafka replica (issue 11's profile). :func:`use_native_reader`
gives a consumer's fetcher a ``PartitionRecords`` whose batch loop is the client's own
rules, kept in Python and run once per batch (CRC check, aborted transactions of
``read_committed``, control batches skipped, decompression by the client's codecs), while
the records of each v2 batch are read in one call (``_native.read_batch_records``) into
the same ``ConsumerRecord`` tuples the client yields. Everything the fetcher reads back
(``next_fetch_offset``, ``records_read``, ``bytes_read``, ``leader_epoch``) moves record by
record exactly as in the client, so a ``poll`` that stops mid-batch resumes where the
client's would. ``tests/test_kafka_records.py`` compares both readers on random batches
(keys, headers, compression, transactions, control batches, mid-batch fetch offsets,
corruption).

It is used only where the client matches what it was written against (kafka-python 3.x
with this fetcher layout) and the consumer has no key or value deserializer (the service
configures none); anywhere else the client's reader stays, and a debug line says why.
"""

from __future__ import annotations

import logging
from typing import Any

from streamweights import _native

log = logging.getLogger("streamweights.kafka")

#: ``PartitionRecords`` attributes the native loop reads or sets (kafka-python 3.0.x).
_NEEDED = ("_consume_aborted_transactions_up_to", "_contains_abort_marker",
           "_is_batch_aborted", "drain", "take")

_native_class: type | None = None

#: The end of a partition's records (``take``'s ``next`` default).
_END = object()


def native_partition_records() -> type:
    """The fetcher's ``PartitionRecords`` with the native record reader (made once)."""
    global _native_class
    if _native_class is None:
        _native_class = _build()
    return _native_class


def _build() -> type:
    from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
    from kafka.errors import CorruptRecordError

    read = _native.read_batch_records
    read_committed = IsolationLevel.READ_COMMITTED

    class NativePartitionRecords(Fetcher.PartitionRecords):
        """The client's partition records; v2 batches' records read by the core."""

        #: The current v2 batch's records as the core read them, their sizes, and how
        #: many of them were handed out (``None``: no batch in hand).
        _ready: list[Any] | None = None
        _sizes: list[int] | None = None
        _at = 0
        #: The records before the fetch offset are skipped (the client's ``dropwhile``
        #: has let a record through).
        _passing = False

        def _maybe_skip_record(self, record: Any) -> bool:
            skip = super()._maybe_skip_record(record)
            if not skip:
                self._passing = True
            return skip

        def take(self, n: int | None = None) -> list[Any]:
            """The client's ``take``: up to ``n`` records (all, for ``None``), an error
            after some records kept for the next call. Records of the batch in hand are
            taken as a slice, with the counters moved once per slice, not one Python
            generator step each (~0.15 µs per record); the rest (a new batch, records
            before the fetch offset, legacy batches, the end) goes through the client's
            iterator as before, so the state after each call is the client's."""
            self._maybe_raise_next_inline_exception()
            records: list[Any] = []
            try:
                while n is None or len(records) < n:
                    ready = self._ready
                    if ready is not None and self._passing and self._at < len(ready):
                        start = self._at
                        stop = len(ready) if n is None else min(len(ready),
                                                                start + n - len(records))
                        chunk = ready[start:stop]
                        self._at = stop
                        self.records_read += stop - start
                        self.bytes_read += sum(self._sizes[start:stop])
                        self.next_fetch_offset = chunk[-1].offset + 1
                        records.extend(chunk)
                        continue
                    record = next(self.record_iterator, _END)
                    if record is _END:
                        break
                    records.append(record)
            except Exception as error:
                if not records:
                    raise
                self._next_inline_exception = error  # raised by the next call
            return records

        def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any,
                            value_deserializer: Any) -> Any:
            topic, partition = tp.topic, tp.partition
            last_batch = None
            batch = records.next_batch()
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(f"Record batch for partition {tp} at offset "
                                             f"{batch.base_offset} failed crc check")
                if batch.magic != 2:  # legacy message formats: the client's own reader
                    yield from self._legacy_records(tp, batch)
                    batch = records.next_batch()
                    continue
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == read_committed and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(batch.producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:  # transaction markers: never handed out
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                batch._maybe_uncompress()  # the client's codecs; a no-op when uncompressed
                found, sizes, error = read(
                    batch._buffer, batch._pos, batch.records_count, batch.base_offset,
                    batch.first_timestamp, batch.max_timestamp, batch.timestamp_type, topic,
                    partition, self.leader_epoch, ConsumerRecord)
                # Handed out one at a time here, or in slices by ``take`` (which moves
                # ``_at`` and the counters alike while this generator waits at a yield).
                self._ready, self._sizes, self._at = found, sizes, 0
                while self._at < len(found):
                    index = self._at
                    self._at = index + 1
                    record = found[index]
                    self.records_read += 1
                    self.bytes_read += sizes[index]
                    self.next_fetch_offset = record.offset + 1
                    yield record
                self._ready = self._sizes = None
                if error is not None:
                    raise CorruptRecordError(f"Found invalid record structure: {error}")
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                # The batch's last offset survives compaction: fetch from after it.
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

        def _legacy_records(self, tp: Any, batch: Any) -> Any:
            """A v0/v1 batch, record by record as the client reads it (installed only
            without deserializers: keys and values are the bytes read)."""
            for record in batch:
                if self.check_crcs and not record.validate_crc():
                    raise CorruptRecordError(f"Record for partition {tp} at offset "
                                             f"{record.offset} failed crc check")
                key, value, headers = record.key, record.value, record.headers
                header_size = sum(len(k.encode("utf-8")) + (0 if v is None else len(v))
                                  for k, v in headers) if headers else -1
                self.records_read += 1
                self.bytes_read += record.size_in_bytes
                self.next_fetch_offset = record.offset + 1
                yield ConsumerRecord(
                    tp.topic, tp.partition, self.leader_epoch, record.offset,
                    record.timestamp, record.timestamp_type, key, value, headers,
                    record.checksum, -1 if key is None else len(key),
                    -1 if value is None else len(value), header_size)

    return NativePartitionRecords


def use_native_reader(consumer: Any) -> bool:
    """Give ``consumer``'s fetcher the native record reader; ``False`` (and the client's
    own reader) where the client is not the one it was written against."""
    fetcher = getattr(consumer, "_fetcher", None)
    config = getattr(consumer, "config", {})
    stock = getattr(fetcher, "PartitionRecords", None)
    try:
        from kafka.record.default_records import DefaultRecordBatch

        batch_layout = {"_buffer", "_pos"} <= set(DefaultRecordBatch.__slots__) and \
            hasattr(DefaultRecordBatch, "_maybe_uncompress")
    except (ImportError, AttributeError):
        batch_layout = False
    if stock is None or not batch_layout or not all(hasattr(stock, n) for n in _NEEDED):
        log.debug("kafka: this kafka-python's fetcher is not the one the native record "
                  "reader was written for; its own reader stays")
        return False
    if config.get("key_deserializer") is not None or \
            config.get("value_deserializer") is not None:
        log.debug("kafka: the consumer has deserializers; the client's own reader stays")
        return False
    fetcher.PartitionRecords = native_partition_records()
    return True
