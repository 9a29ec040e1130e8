"""The core's Kafka record batch (``_native.RecordBatchBuilder``, used by
``runtime/lean_send.py``) against kafka-python's own builder: the same bytes for the same
records (tombstones, a ``None`` value, among them), timestamps and producer state, the
same answer to "does it fit", a CRC the client's reader accepts, and the records read
back as written."""

from __future__ import annotations

import random

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from streamweights import _native


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(size))


@pytest.mark.parametrize("seed", range(6))
def test_batches_are_the_clients_bytes(seed):
    rng = random.Random(seed)
    for _ in range(40):
        batch_size = rng.choice([80, 1000, 16 << 10, 256 << 10])
        ours = _native.RecordBatchBuilder(batch_size)
        theirs = DefaultRecordBatchBuilder(magic=2, compression_type=0,
                                           is_transactional=False, producer_id=-1,
                                           producer_epoch=-1, base_sequence=-1,
                                           batch_size=batch_size)
        start = rng.randrange(1, 1 << 42)
        written = []
        for offset in range(rng.randrange(1, 200)):
            key = _random_bytes(rng, rng.randrange(0, 40))
            size = rng.choice([None, 0, 5, 200, 3000])  # None: a tombstone
            value = None if size is None else _random_bytes(rng, size)
            stamp = start + rng.randrange(-5000, 100_000)  # out of order too
            taken = ours.append(key, value, stamp)
            assert taken == (theirs.append(offset, stamp, key, value, []) is not None)
            if not taken:
                break
            written.append((offset, stamp, key, value))
        assert ours.count == len(written) and ours.size() == theirs.size()
        assert ours.is_full() == (theirs.size() >= batch_size)
        state = (rng.randrange(1 << 40), rng.randrange(1 << 15), rng.randrange(1 << 31),
                 rng.random() < 0.5)
        theirs.set_producer_state(*state)
        built = ours.build(*state)
        assert built == bytes(theirs.build())
        batch = DefaultRecordBatch(built)
        assert batch.validate_crc()
        assert (batch.producer_id, batch.producer_epoch, batch.base_sequence,
                batch.is_transactional) == state
        assert [(r.offset, r.timestamp, r.key, r.value) for r in batch] == written


def test_a_record_is_stamped_now_when_no_time_is_given():
    import time

    before = int(time.time() * 1000)
    builder = _native.RecordBatchBuilder(1 << 10)
    assert builder.append(b"k", b"v")
    after = int(time.time() * 1000)
    (record,) = list(DefaultRecordBatch(builder.build(7, 0, 0, True)))
    assert before <= record.timestamp <= after + 1


def test_the_first_record_always_fits():
    builder = _native.RecordBatchBuilder(10)
    assert builder.append(b"key", b"x" * 100, 1)
    assert builder.is_full() and not builder.append(b"key", b"y", 2)
    assert builder.count == 1
