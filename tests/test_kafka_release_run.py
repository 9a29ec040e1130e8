"""The Kafka source's merge, in the core (``native/src/kafka_merge.rs``), releases a whole
run per call (``TaskMerges.release``, one call per fetch) in exactly the order the Python
record-at-a-time release gave (the oracle in ``tests/reference/kafka_merge.py``), and
buffers the same keys: same merged order, so the same output bytes."""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import orjson
import pytest

from streamweights import _native
from streamweights.runtime.kafka_source import LABELS, PREDICTIONS, KafkaSource, event_time
from tests.reference.kafka_merge import TaskMerge, release_one

TaskMerges = _native.TaskMerges


class Fetched(NamedTuple):
    """What ``TaskMerges.add_records`` reads of a kafka-python ``ConsumerRecord``."""

    offset: int
    value: bytes


def _partition(generator: random.Random, side: int, number: int, length: int
               ) -> list[tuple[int, float, bytes]]:
    """``(offset, ts, raw)`` of one input partition: event time mostly rising with many
    ties, sometimes stepping back, now and then unreadable (-inf) or jumping far ahead
    (beyond the merge's skew limit)."""
    rows, ts = [], generator.choice((0.0, 5.0))
    for offset in range(length):
        roll = generator.random()
        if roll < 0.03:
            value = -math.inf
        elif roll < 0.05:
            value = ts + 1e6  # far future: merged at its predecessor's place
        else:
            ts += generator.choice((0.0, 0.0, 0.5, 1.0, -1.5))
            value = ts
        raw = (b"{unreadable" if value == -math.inf
               else orjson.dumps({"ts": value, "at": f"{number}:{side}:{offset}"}))
        rows.append((offset, value, raw))
    return rows


def _replay(seed: int) -> None:
    generator = random.Random(seed)
    numbers = generator.sample(range(8), generator.randint(1, 5))
    data = {(number, side): _partition(generator, side, number, generator.randint(0, 300))
            for number in numbers for side in (PREDICTIONS, LABELS)}
    skew = generator.choice((100.0, 1e9))
    old = {number: TaskMerge(skew) for number in numbers}
    new = TaskMerges()
    cursors = dict.fromkeys(data, 0)
    old_out: list[tuple[int, int, int, bytes]] = []
    new_out: list[tuple[int, int, int, bytes]] = []
    for _fetch in range(400):
        # a fetch: some partitions bring a batch of random size, in random order
        for part in generator.sample(list(data), len(data)):
            if generator.random() < 0.5:
                take = generator.randint(0, 60)
                start = cursors[part]
                batch = data[part][start:start + take]
                for offset, ts, raw in batch:  # the oracle: one add per record
                    old[part[0]].add(part[1], offset, ts, raw)
                new.add_records(part[0], part[1], [
                    Fetched(offset, raw) for offset, _, raw in batch], event_time, skew)
                cursors[part] = min(start + take, len(data[part]))
        # caught up: fetched to the end, or (live mode) randomly not yet known
        flags = {number: tuple(cursors[(number, side)] == len(data[(number, side)])
                               and generator.random() < 0.8 for side in (PREDICTIONS, LABELS))
                 for number in numbers}
        asked: list[int] = []

        def passable(number: int, asked: list[int] = asked,
                     flags: dict[int, tuple[bool, ...]] = flags) -> tuple[bool, ...]:
            asked.append(number)
            return flags[number]

        while (released := release_one(old, flags.__getitem__)) is not None:
            old_out.append(released)
        run = new.release(passable)
        for _ in range(run):
            raw = new.next_record()
            new_out.append((*new.last_origin(), raw))
        assert new.next_record() is None and new.run_left() == 0
        assert len(asked) == len(set(asked))  # at most once per task per fetch
        assert new.release(passable) == 0  # nothing more until the next fetch
        assert new_out == old_out
        for number in numbers:
            for side in (PREDICTIONS, LABELS):
                assert new.entries(number, side) == list(old[number].buffers[side])
        if all(cursors[part] == len(rows) for part, rows in data.items()) and not any(
                len(merge) for merge in old.values()):
            break
    assert len(new_out) > 0 or not any(data.values())


@pytest.mark.parametrize("seed", range(60))
def test_the_core_release_gives_the_record_at_a_time_order(seed):
    """Scenario: 1-5 tasks, each partition's event time with ties, steps back, unreadable
    and far-future records, fetched in random batches with random caught-up flags. We
    expect: a batch buffered by the core's ``add_records`` holds the keys one Python
    ``add`` per record gave (ts read from the record), and after every fetch one core
    ``release`` hands out exactly the records, with their origins, in exactly the order,
    that the Python merge releasing one at a time until nothing was ready gave, and
    leaves the same records buffered."""
    _replay(seed)


def _handed_out(merges: TaskMerges) -> list[bytes]:
    """Every record of the current run, handed out."""
    out = []
    while (raw := merges.next_record()) is not None:
        out.append(raw)
    return out


def test_release_holds_a_task_back_until_its_partner_is_known():
    """Scenario: task 0's labels partition is empty and not caught up; task 1 has both.
    We expect: task 1's records pass, task 0's prediction waits (asked once), and comes
    once its label arrives, before the later one."""
    merges = TaskMerges()
    merges.add(0, PREDICTIONS, 0, 1.0, b"p0", 1e9)
    merges.add(1, PREDICTIONS, 0, 2.0, b"q0", 1e9)
    merges.add(1, LABELS, 0, 3.0, b"m0", 1e9)
    asked = []

    def passable(number: int) -> tuple[bool, bool]:
        asked.append(number)
        return (False, False) if number == 0 else (True, True)

    assert merges.release(passable) == 2
    assert _handed_out(merges) == [b"q0", b"m0"]
    assert asked == [0, 1]
    assert merges.buffer_sizes() == {0: (1, 0), 1: (0, 0)} and merges.buffered() == 1
    merges.add(0, LABELS, 0, 1.5, b"l0", 1e9)
    assert merges.release(lambda n: (False, False)) == 1
    assert _handed_out(merges) == [b"p0"]


def test_a_run_is_handed_out_only_as_far_as_allowed_and_whole_before_the_next():
    """Scenario: a run of three records, of which only one is allowed out (a test hook
    holding input back), then the rest. We expect: one record, then nothing until more
    are allowed; asking for the next run before this one is handed out is refused (its
    records would be lost); a roll-back (``reset``) drops run and buffers but keeps the
    last origin."""
    merges = TaskMerges()
    for offset in range(3):
        merges.add(4, PREDICTIONS, offset, float(offset), b"p%d" % offset, 1e9)
    assert merges.release(lambda n: (True, True)) == 3
    merges.allow(1)
    assert _handed_out(merges) == [b"p0"] and merges.run_left() == 2
    with pytest.raises(ValueError, match="not handed out"):
        merges.release(lambda n: (True, True))
    merges.allow(99)
    assert _handed_out(merges) == [b"p1", b"p2"] and merges.handed_out()
    merges.add(4, LABELS, 0, 0.5, b"l0", 1e9)
    merges.reset()
    assert merges.buffered() == 0 and merges.run_left() == 0
    assert merges.last_origin() == (4, PREDICTIONS, 2)


def test_offsets_and_origin_follow_the_records_handed_out_not_the_run():
    """Scenario: a run of 6 records is taken from the buffers; the caller stops after 4
    (a bound, a stop request) and later opens the source again. We expect: at each
    record, ``next_offsets`` (what a commit writes), ``released_counts`` and
    ``last_origin`` (a dead letter's origin) name the records handed out so far and no
    more; the second ``open`` goes on with the 5th record, nothing lost or repeated."""
    source = KafkaSource("unused:9092", "preds", "labels", group_id="g")
    source.consumer = object()  # never asked: both tasks count as caught up
    source._passable = {0: (True, True), 1: (True, True)}
    for number, side, offset, ts, raw in [
            (0, PREDICTIONS, 7, 1.0, b"a"), (0, LABELS, 3, 2.0, b"b"),
            (1, PREDICTIONS, 0, 1.5, b"c"), (1, LABELS, 0, 3.0, b"d"),
            (0, PREDICTIONS, 8, 4.0, b"e"), (1, PREDICTIONS, 1, 5.0, b"f")]:
        source.merges.add(number, side, offset, ts, raw, 1e9)
    seen = []
    records = source.open(10)
    for position, raw in records:
        seen.append((position, raw, source.last_origin, source.next_offsets(),
                     dict(source.released_counts)))
        if len(seen) == 4:
            break
    records.close()
    assert [raw for _, raw, *_ in seen] == [b"a", b"c", b"b", b"d"]
    assert seen[0][2:] == (("preds", 0, 7), {("preds", 0): 8}, {0: 1})
    assert seen[1][2:] == (("preds", 1, 0), {("preds", 0): 8, ("preds", 1): 1}, {0: 1, 1: 1})
    assert seen[3][2:] == (("labels", 1, 0), {("preds", 0): 8, ("preds", 1): 1,
                                              ("labels", 0): 4, ("labels", 1): 1},
                           {0: 2, 1: 2})
    again = source.open(14)
    assert [next(again), next(again)] == [(14, b"e"), (15, b"f")]
    assert source.last_origin == ("preds", 1, 1)
    assert source.next_offsets()[("preds", 0)] == 9 and source.released_counts == {0: 3, 1: 3}


def test_consumer_records_are_read_by_index_as_by_attribute():
    """Scenario: the same fetched batch as kafka-python's ``ConsumerRecord`` tuples, read
    by index (the source passes the type and the two fields' places), and as other
    objects with ``offset`` and ``value``, read by attribute; a tuple of another type is
    given too. We expect: the same buffered entries, and the foreign tuple read by its
    attributes, not by the places of ``ConsumerRecord``'s fields."""
    from kafka.consumer.fetcher import ConsumerRecord

    from streamweights.runtime.kafka_source import record_fields

    fields = record_fields()
    assert fields is not None and fields[0] is ConsumerRecord
    values = [orjson.dumps({"ts": 1.5 * offset, "n": offset}) for offset in range(50)]
    as_tuples = [ConsumerRecord("preds", 3, -1, 100 + offset, 0, 0, None, value, [], None,
                                -1, len(value), -1) for offset, value in enumerate(values)]
    by_index, by_attribute = TaskMerges(), TaskMerges()
    by_index.add_records(3, PREDICTIONS, as_tuples, event_time, 1e9, fields)
    by_attribute.add_records(3, PREDICTIONS, [Fetched(100 + offset, value) for offset, value
                                              in enumerate(values)], event_time, 1e9)
    assert by_index.entries(3, PREDICTIONS) == by_attribute.entries(3, PREDICTIONS)
    assert by_index.entries(3, PREDICTIONS)[7] == (10.5, PREDICTIONS, 107, values[7])
    foreign = TaskMerges()
    foreign.add_records(3, LABELS, [Fetched(5, values[2])], event_time, 1e9, fields)
    assert foreign.entries(3, LABELS) == [(3.0, LABELS, 5, values[2])]


def test_a_source_holding_its_own_iterator_is_collected():
    """Scenario: the core's iterator refers to its source (to call ``_refill`` and read
    the roll-back flag); code that keeps the iterator on the source makes a cycle. We
    expect: the collector frees both (the iterator lets it see its references)."""
    import gc
    import weakref

    source = KafkaSource("unused:9092", "preds", "labels", group_id="g")
    source.consumer = object()  # never asked: nothing is fetched
    source.kept = source.open(0)
    gone = weakref.ref(source)
    del source
    gc.collect()
    assert gone() is None
