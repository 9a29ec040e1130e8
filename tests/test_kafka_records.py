"""The native record reader (``runtime/kafka_records.py``) against kafka-python's own.

Both readers get the same fetched bytes (record batches built with the client's own
builders: keys, headers, gzip, the append-time flag, transactions with commit and abort
markers, legacy v1 batches, fetch offsets in the middle of a batch, corrupted records)
and are drained by ``take`` calls of random sizes, as the fetcher drains them: every
record, every exception's type and every field the fetcher reads back must agree.
"""

from __future__ import annotations

import gc
import random
import struct
import sys
from types import SimpleNamespace

import pytest
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from streamweights import _native
from streamweights.runtime.kafka_records import native_partition_records, use_native_reader

TP = TopicPartition("predictions", 3)
STATE = ("next_fetch_offset", "records_read", "bytes_read", "leader_epoch")


def v2_batch(rng: random.Random, base: int, count: int, *, gzip: bool = False,
             producer_id: int = -1, transactional: bool = False,
             append_time: bool = False, epoch: int = 7) -> bytes:
    """A v2 batch of ``count`` records from offset ``base`` (random keys, values, headers)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=DefaultRecordBatch.CODEC_GZIP if gzip else 0,
        is_transactional=transactional, producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1, batch_size=10**8)
    for i in range(count):
        key = None if rng.random() < 0.5 else rng.randbytes(rng.randrange(0, 20))
        value = None if rng.random() < 0.05 else rng.randbytes(rng.choice([0, 5, 150, 400]))
        headers = [(rng.choice(["trace", "ü-key", "", "h"]),
                    None if rng.random() < 0.3 else rng.randbytes(rng.randrange(0, 9)))
                   for _ in range(rng.choice([0, 0, 1, 3]))]
        builder.append(i, timestamp=1_700_000_000_000 + rng.randrange(-5, 10**6), key=key,
                       value=value, headers=headers)
    data = builder.build()
    if append_time:
        set_attribute(data, DefaultRecordBatch.TIMESTAMP_TYPE_MASK)
    struct.pack_into(">q", data, 0, base)
    struct.pack_into(">i", data, 12, epoch)
    return bytes(data)


def control_batch(base: int, producer_id: int, abort: bool) -> bytes:
    """A transaction marker: one control record (version 0, type 0 abort / 1 commit)."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True,
                                        producer_id=producer_id, producer_epoch=0,
                                        base_sequence=-1, batch_size=10**6)
    builder.append(0, timestamp=1_700_000_000_000, key=struct.pack(">hh", 0, 0 if abort else 1),
                   value=b"\x00\x00\x00\x00\x00\x00", headers=[])
    data = builder.build()
    set_attribute(data, DefaultRecordBatch.CONTROL_MASK)
    struct.pack_into(">q", data, 0, base)
    return bytes(data)


def legacy_batch(rng: random.Random, base: int, count: int) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=10**8)
    for i in range(count):
        builder.append(base + i, timestamp=1_700_000_000_000 + i,
                       key=None if i % 2 else b"k%d" % i, value=rng.randbytes(30))
    return bytes(builder.build())


def set_attribute(data: bytearray, mask: int) -> None:
    """Set a flag of a v2 batch's attributes (the builder sets no control or append-time
    flag) and reseal its CRC."""
    struct.pack_into(">h", data, 21, struct.unpack_from(">h", data, 21)[0] | mask)
    reseal(data)


def reseal(data: bytearray) -> None:
    """Recompute a v2 batch's CRC (it covers the bytes from the attributes on)."""
    struct.pack_into(">I", data, 17, calc_crc32c(memoryview(data)[21:]))


def drain(cls: type, buffer: bytes, fetch_offset: int, rng: random.Random, **options):
    """Everything a fetcher sees while draining ``buffer`` with ``take`` calls."""
    parts = cls(fetch_offset, TP, MemoryRecords(buffer), **options)
    seen = []
    for _ in range(10_000):
        try:
            got = parts.take(rng.choice([1, 3, 50, 500, None]))
        except Exception as error:  # the type is what is compared
            seen.append(("raised", type(error).__name__))
            break
        seen.append((got, tuple(getattr(parts, name) for name in STATE)))
        if not got and not parts:
            break
    seen.append(("end", bool(parts), tuple(getattr(parts, name) for name in STATE)))
    return seen


def both(buffer: bytes, seed: int, fetch_offset: int = 0, **options) -> tuple[list, list]:
    stock = drain(Fetcher.PartitionRecords, buffer, fetch_offset, random.Random(seed),
                  **options)
    native = drain(native_partition_records(), buffer, fetch_offset, random.Random(seed),
                   **options)
    return stock, native


@pytest.mark.parametrize("seed", range(40))
def test_random_v2_batches_read_the_same(seed: int) -> None:
    rng = random.Random(seed)
    buffer, offset = b"", 0
    for _ in range(rng.randrange(1, 6)):
        count = rng.choice([1, 2, 17, 300])
        buffer += v2_batch(rng, offset, count, gzip=rng.random() < 0.3,
                           append_time=rng.random() < 0.2, epoch=rng.randrange(0, 9))
        offset += count + rng.choice([0, 0, 4])  # a gap: records compacted away
    fetch_offset = rng.choice([0, 0, rng.randrange(0, offset)])  # maybe mid-batch
    stock, native = both(buffer, seed, fetch_offset)
    assert native == stock
    if fetch_offset == 0:
        assert any(got for got, *_ in native if isinstance(got, list))


def test_offsets_and_timestamps_past_64_bits_read_the_same() -> None:
    """A base offset and first timestamp at the top of the 64-bit range: base + delta
    passes it (a hostile or corrupted batch), and both readers give the same Python
    ints (the native reader's wide path, not only its 64-bit one)."""
    rng = random.Random(5)
    data = bytearray(v2_batch(rng, 0, 40))
    top = 2**63 - 10
    struct.pack_into(">q", data, 0, top)  # base offset (outside the CRC)
    struct.pack_into(">q", data, 27, top)  # first timestamp (inside it)
    reseal(data)
    stock, native = both(bytes(data), 5, fetch_offset=top)
    assert native == stock
    offsets = [record.offset for got, *_ in native if isinstance(got, list) for record in got]
    assert offsets and max(offsets) >= 2**63  # the wide path ran
    assert min(offsets) == top


@pytest.mark.parametrize("abort", [True, False])
def test_transactions_read_committed_skip_the_same_batches(abort: bool) -> None:
    rng = random.Random(5)
    aborted_pid, committed_pid = 11, 12
    buffer = v2_batch(rng, 0, 5, producer_id=aborted_pid, transactional=True)
    buffer += v2_batch(rng, 5, 4, producer_id=committed_pid, transactional=True)
    buffer += control_batch(9, aborted_pid, abort=abort)
    buffer += control_batch(10, committed_pid, abort=False)
    buffer += v2_batch(rng, 11, 3)
    aborted = [SimpleNamespace(producer_id=aborted_pid, first_offset=0)] if abort else []
    for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        stock, native = both(buffer, 1, isolation_level=level, aborted_transactions=aborted)
        assert native == stock
        offsets = [r.offset for got, *_ in native if isinstance(got, list) for r in got]
        skipped = abort and level == IsolationLevel.READ_COMMITTED
        assert offsets == ([] if skipped else list(range(5))) + list(range(5, 9)) + [11, 12, 13]


def test_legacy_batches_read_the_same() -> None:
    rng = random.Random(2)
    buffer = legacy_batch(rng, 0, 4) + v2_batch(rng, 4, 6) + legacy_batch(rng, 10, 3)
    stock, native = both(buffer, 3)
    assert native == stock
    assert sum(len(got) for got, *_ in native if isinstance(got, list)) == 13


@pytest.mark.parametrize("seed", range(100))
def test_corrupted_records_fail_the_same_way(seed: int) -> None:
    """A byte changed inside the records (CRC resealed, so the reader meets it): both
    readers hand out the same records before it, then both raise the same error, or
    both read the same (wrong but well-formed) records."""
    rng = random.Random(1000 + seed)
    batch = bytearray(v2_batch(rng, 0, rng.choice([1, 5, 40])))
    at = rng.randrange(61, len(batch))  # past the 61-byte header
    batch[at] = rng.randrange(256)
    if rng.random() < 0.3:
        batch = batch[:rng.randrange(61, len(batch))]  # cut short as well
        struct.pack_into(">i", batch, 8, len(batch) - 12)
    reseal(batch)
    stock, native = both(bytes(batch), seed)
    assert native == stock


def test_a_bad_crc_is_refused_by_both() -> None:
    batch = bytearray(v2_batch(random.Random(9), 0, 3))
    batch[-1] ^= 0xFF
    stock, native = both(bytes(batch), 0)
    assert native == stock
    assert ("raised", "CorruptRecordError") in native


def test_the_reader_is_installed_only_without_deserializers() -> None:
    class Consumer:
        def __init__(self, **config):
            self.config = {"key_deserializer": None, "value_deserializer": None, **config}
            self._fetcher = SimpleNamespace(PartitionRecords=Fetcher.PartitionRecords)

    plain = Consumer()
    assert use_native_reader(plain)
    assert plain._fetcher.PartitionRecords is native_partition_records()
    decoding = Consumer(value_deserializer=bytes.decode)
    assert not use_native_reader(decoding)
    assert decoding._fetcher.PartitionRecords is Fetcher.PartitionRecords
    assert not use_native_reader(SimpleNamespace(config={}))  # no fetcher: left alone


def test_records_are_the_clients_own_type_whatever_its_layout() -> None:
    """The core fills a ``ConsumerRecord`` (a namedtuple: tuple layout) in place; a
    record type that is a tuple subclass with an instance dict is made through
    ``tuple.__new__`` instead. Both hold the client's fields, survive a collection, and
    a record freed lets its items go."""
    class WithDict(tuple):  # no __slots__: instances carry a dict
        pass

    batch = DefaultRecordBatch(v2_batch(random.Random(3), 40, 25))
    arguments = (batch._buffer, batch._pos, batch.records_count, batch.base_offset,
                 batch.first_timestamp, batch.max_timestamp, batch.timestamp_type,
                 TP.topic, TP.partition, 7)
    stock = Fetcher.PartitionRecords(0, TP, MemoryRecords(batch._buffer)).take()
    filled, _, error = _native.read_batch_records(*arguments, ConsumerRecord)
    made, _, made_error = _native.read_batch_records(*arguments, WithDict)
    gc.collect()
    assert error is None and made_error is None
    assert [type(record) for record in filled] == [ConsumerRecord] * 25
    assert [type(record) for record in made] == [WithDict] * 25
    assert filled == [tuple(record) for record in made]
    assert [record.offset for record in filled] == list(range(40, 65))
    assert [(r.topic, r.partition, r.leader_epoch) for r in filled] == [(TP.topic, 3, 7)] * 25
    assert [tuple(record) for record in filled] == [tuple(record) for record in stock]
    value = filled[0].value
    references = sys.getrefcount(value)
    del filled
    gc.collect()
    assert sys.getrefcount(value) == references - 1  # the record let its items go
