"""The pure parts of spread commits (``runtime.commit_spread``) and the merge's record logs
(``TaskMerges.keep_log`` / ``take_logs``): which streams a checkpoint writes, the log
records' keys and bytes, and that a log holds exactly the records handed out."""

from __future__ import annotations

import itertools
import random
import struct

import numpy as np
import pytest

from streamweights import _native
from streamweights.runtime.commit_spread import (
    WriteMarks,
    decode_log,
    encode_log,
    first_record,
    log_key,
    oldest_due,
    parse_log_key,
)
from streamweights.runtime.exceptions import SnapshotError
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS


def framed(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def test_oldest_due_writes_all_up_to_the_floor_then_the_oldest_share():
    """Scenario: changed streams with written marks, below and above the floor, with
    one never written. We expect: all of them up to the floor, with ``spread`` 1, or
    when one was never written; past the floor the ``1/spread`` (at least the floor)
    with the smallest marks, in the given order."""
    written = {name: mark for mark, name in enumerate("fedcba")}
    assert oldest_due(list("abc"), written, 3, 4) == list("abc")
    assert oldest_due(list("abcdef"), written, 1, 1) == list("abcdef")
    assert oldest_due(list("abcdef"), written, 1, 3) == ["e", "f"]
    assert oldest_due(list("abcdef"), written, 4, 3) == list("cdef")
    assert oldest_due([*"abcdef", "new"], written, 1, 3) == [*"abcdef", "new"]


@pytest.mark.parametrize("seed", range(40))
def test_write_marks_choose_as_oldest_due_and_name_the_logs_still_needed(seed):
    """Scenario: 1-400 streams over 1-4 tasks, random marks and counts (ties common,
    sometimes one never written), a random changed subset, random floor and spread.
    We expect: ``WriteMarks.due`` picks the same streams as ``oldest_due`` over names
    (which the embedded checkpoints use), and ``needed`` gives, per task with changed
    streams left unwritten, the least count they were written at, and no other task."""
    rng = random.Random(seed)
    names = [f"s{index}" for index in range(rng.randrange(1, 401))]
    tasks = [rng.randrange(rng.randrange(1, 5)) for _ in names]
    marks = WriteMarks(names, tasks)
    written, counts = {}, {}
    for name in names:
        if rng.random() < (0.002 if seed % 2 else 0.0):
            continue  # never written
        written[name], counts[name] = rng.randrange(6), rng.randrange(1_000)
        marks.set(name, written[name], counts[name])
    changed = sorted(rng.sample(range(len(names)), rng.randrange(len(names) + 1)))
    floor, spread = rng.randrange(1, 40), rng.choice([1, 2, 5, 40, 160])
    due = marks.due(np.asarray(changed, dtype=np.int64), floor, spread)
    expected = oldest_due([names[index] for index in changed], written, floor, spread)
    assert [names[index] for index in due.tolist()] == expected
    left: dict[int, int] = {}
    for index in sorted(set(changed) - set(due.tolist())):
        task = tasks[index]
        left[task] = min(left.get(task, counts[names[index]]), counts[names[index]])
    assert marks.needed(np.asarray(changed, dtype=np.int64), due) == left
    assert marks.counts() == counts


def test_write_marks_forget_and_take_many_at_once():
    """We expect: ``set_many`` marks each stream given, ``clear`` forgets every mark (no
    stream known written, so ``due`` writes every changed one)."""
    marks = WriteMarks(list("abcd"), [0, 1, 0, 1])
    marks.set_many(list("abcd"), 3, 70)
    marks.set_many(["b"], 4, 90)
    assert marks.counts() == {"a": 70, "b": 90, "c": 70, "d": 70}
    changed = np.arange(4, dtype=np.int64)
    assert marks.due(changed, 1, 2).tolist() == [0, 2]
    assert marks.needed(changed, np.asarray([0, 2])) == {1: 70}
    marks.clear()
    assert marks.counts() == {}
    assert marks.due(changed, 1, 2).tolist() == [0, 1, 2, 3]


def test_log_keys_round_trip_and_other_keys_are_not_logs():
    """We expect: a log key parses back to its task and start; stream, segment, part
    and task keys, and malformed log keys, are not logs."""
    assert log_key(3, 12_345) == b"i/3/12345"
    assert parse_log_key(log_key(3, 12_345)) == (3, 12_345)
    for key in (b"s/i/3", b"j/1/s", b"3", b"i/3", b"i/x/1", b"i/3/1/2", b"i//1"):
        assert parse_log_key(key) is None


@pytest.mark.parametrize("limit", [1 << 20, 300, 40])
def test_a_log_round_trips_whole_or_split_between_records(limit):
    """Scenario: 200 records of 0-60 bytes (empty ones too, as a tombstone's value is
    logged) numbered from 1,000, encoded under a roomy limit, a small one and one smaller
    than some records. We expect: the chunks cover 1,000..1,200 in order without gaps,
    each decodes to its start and records, each no larger than the limit allows unless
    it holds one record, and together they give the records back in order."""
    rng = random.Random(limit)
    values = [bytes(rng.randrange(256) for _ in range(rng.randrange(61)))
              for _ in range(200)]
    chunks = encode_log(1_000, len(values), framed(values), limit)
    assert chunks[0][0] == 1_000 and chunks[-1][1] == 1_200
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert (len(chunks) == 1) == (limit == 1 << 20)
    back = []
    for start, end, value in chunks:
        first, records = decode_log(value, "test")
        assert (first, first + len(records)) == (start, end)
        assert len(framed(records)) + 16 <= limit or len(records) == 1
        back.extend(records)
    assert back == values


def test_a_damaged_log_is_a_snapshot_error_naming_where():
    """We expect: a log with a wrong count, one cut short, and bytes that are not a log
    at all are refused with SnapshotError naming the place given."""
    ((_, _, value),) = encode_log(0, 2, framed([b"ab", b"cd"]), 1 << 20)
    with pytest.raises(ValueError, match="not 3"):
        encode_log(0, 3, framed([b"ab", b"cd"]), 5)
    from streamweights.runtime.compression import compress, decompress

    data = decompress(value)
    for broken in (data[:-1], data[:4] + struct.pack("<QI", 0, 3) + data[16:], b"x" * 20):
        with pytest.raises(SnapshotError, match="task 7: record log cannot be decoded"):
            decode_log(compress(broken), "task 7")


def test_the_merge_logs_what_it_hands_out_per_task_and_drops_it_on_reset():
    """Scenario: records of two tasks (one value ``None``, as a tombstone in an input
    topic) released and handed out in part; logging turned on, then off. We expect:
    ``take_logs`` gives per task the values handed out, in order, framed (``None`` as
    empty), and empties them; records not yet handed out are not in it; a roll-back
    (``reset``) drops what was logged; with logging off nothing is kept."""
    merges = _native.TaskMerges()
    merges.keep_log(True)
    for number, side, offset, ts, raw in [
            (0, PREDICTIONS, 0, 1.0, b"a"), (1, PREDICTIONS, 0, 1.5, None),
            (0, LABELS, 0, 2.0, b"bb"), (1, LABELS, 0, 3.0, b"ccc")]:
        merges.add(number, side, offset, ts, raw, 1e9)
    assert merges.release(lambda n: (True, True)) == 4
    handed = [merges.next_record() for _ in range(3)]
    assert handed == [b"a", None, b"bb"]
    assert merges.take_logs() == {0: framed([b"a", b"bb"]), 1: framed([b""])}
    assert merges.take_logs() == {}
    assert merges.next_record() == b"ccc"
    merges.reset()
    assert merges.take_logs() == {}
    merges.keep_log(False)
    merges.add(2, PREDICTIONS, 0, 1.0, b"d", 1e9)
    merges.release(lambda n: (True, True))
    assert merges.next_record() == b"d" and merges.take_logs() == {}


def test_first_record_of_framed_records():
    """We expect: the first value of framed records (empty ones too), ``None`` for no
    records."""
    assert first_record(framed([b"ab", b"cde"])) == b"ab"
    assert first_record(framed([b"", b"x"])) == b""
    assert first_record(b"") is None
