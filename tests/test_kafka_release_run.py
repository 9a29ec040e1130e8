"""The Kafka source's merge releases a whole run per call (``release_run``, one call per
fetch) in exactly the order the record-at-a-time release gave (the oracle in
``tests/reference/kafka_merge.py``): same merged order, so the same output bytes."""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import orjson
import pytest

from streamweights.runtime.kafka_source import (
    LABELS,
    PREDICTIONS,
    KafkaSource,
    TaskMerge,
    release_run,
)
from tests.reference.kafka_merge import release_one


class Fetched(NamedTuple):
    """What ``TaskMerge.add_records`` reads of a kafka-python ``ConsumerRecord``."""

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
    new = {number: TaskMerge(skew) for number in numbers}
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
                new[part[0]].add_records(part[1], [Fetched(offset, raw) for offset, _, raw
                                                    in batch])
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
        new_out.extend((number, entry[1], entry[2], entry[3])
                       for number, entry in release_run(new, passable))
        assert len(asked) == len(set(asked))  # at most once per task per fetch
        assert release_run(new, passable) == []  # nothing more until the next fetch
        assert new_out == old_out
        for number in numbers:
            assert old[number].buffers == new[number].buffers
        if all(cursors[part] == len(rows) for part, rows in data.items()) and not any(
                len(merge) for merge in old.values()):
            break
    assert len(new_out) > 0 or not any(data.values())


@pytest.mark.parametrize("seed", range(60))
def test_release_run_gives_the_record_at_a_time_order(seed):
    """Scenario: 1-5 tasks, each partition's event time with ties, steps back, unreadable
    and far-future records, fetched in random batches with random caught-up flags. We
    expect: a batch buffered by ``add_records`` holds what one ``add`` per record gave
    (ts read from the record), and after every fetch one ``release_run`` releases exactly
    the records, in exactly the order, that releasing one at a time until nothing was
    ready gave, and leaves the same records buffered."""
    _replay(seed)


def test_release_run_holds_a_task_back_until_its_partner_is_known():
    """Scenario: task 0's labels partition is empty and not caught up; task 1 has both.
    We expect: task 1's records pass, task 0's prediction waits (asked once), and comes
    once its label arrives, before the later one."""
    tasks = {0: TaskMerge(), 1: TaskMerge()}
    tasks[0].add(PREDICTIONS, 0, 1.0, b"p0")
    tasks[1].add(PREDICTIONS, 0, 2.0, b"q0")
    tasks[1].add(LABELS, 0, 3.0, b"m0")
    asked = []

    def passable(number: int) -> tuple[bool, bool]:
        asked.append(number)
        return (False, False) if number == 0 else (True, True)

    assert [entry[3] for _, entry in release_run(tasks, passable)] == [b"q0", b"m0"]
    assert asked == [0, 1]
    tasks[0].add(LABELS, 0, 1.5, b"l0")
    assert [entry[3] for _, entry in release_run(tasks, lambda n: (False, False))] == [b"p0"]


def test_offsets_and_origin_follow_the_records_handed_out_not_the_run():
    """Scenario: a run of 6 records is taken from the buffers; the caller stops after 4
    (a bound, a stop request) and later opens the source again. We expect: at each
    record, ``next_offsets`` (what a commit writes), ``released_counts`` and
    ``last_origin`` (a dead letter's origin) name the records handed out so far and no
    more; the second ``open`` goes on with the 5th record, nothing lost or repeated."""
    source = KafkaSource("unused:9092", "preds", "labels", group_id="g")
    source.consumer = object()  # never asked: both tasks count as caught up
    source._passable = {0: (True, True), 1: (True, True)}
    source.tasks = {0: TaskMerge(), 1: TaskMerge()}
    source.tasks[0].add(PREDICTIONS, 7, 1.0, b"a")
    source.tasks[0].add(LABELS, 3, 2.0, b"b")
    source.tasks[1].add(PREDICTIONS, 0, 1.5, b"c")
    source.tasks[1].add(LABELS, 0, 3.0, b"d")
    source.tasks[0].add(PREDICTIONS, 8, 4.0, b"e")
    source.tasks[1].add(PREDICTIONS, 1, 5.0, b"f")
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
