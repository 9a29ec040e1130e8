"""The join written incrementally, in segments (``PendingJoin.encoded_segments``): each
waiting prediction is written once, the layout says which are still waiting, and a join
restored from segments and layout goes on writing exactly what the original writes."""

from __future__ import annotations

import json
import random

import pytest

from streamweights.join import PendingJoin, decode_entry


def _entries(segments: dict[int, str], layout: dict) -> list[list]:
    """``[id, ts, payload]`` of the entries ``layout`` lists, read from ``segments``."""
    found = []
    for segment, size, gone in layout["segments"]:
        texts = json.loads(segments[segment])
        assert len(texts) == size
        found.extend(decode_entry(text) for index, text in enumerate(texts)
                     if index not in set(gone))
    return found


def _kept(join: PendingJoin) -> list[list]:
    return [[e.id, e.ts, e.payload] for e in join.waiting()]


def test_new_entries_go_in_new_segments_and_labels_only_mark_them_gone():
    join = PendingJoin(100, 1e9)
    for i in range(10):
        join.add(f"e{i}", float(i), {"p": [0.1 * i, 1.0]})
    first = join.encoded_segments(cap=60)
    assert [segment for segment, _ in first.segments] == [0, 1, 2, 3, 4]  # 2 entries each
    assert first.layout == {"next": 5, "segments": [(s, 2, []) for s in range(5)]}
    join.pop("e0")
    join.pop("e3")
    join.add("e10", 10.0, {"p": [1.0]})
    second = join.encoded_segments(cap=60)
    assert [segment for segment, _ in second.segments] == [5]
    assert json.loads(second.segments[0][1])[0][0] == "e10"
    assert second.layout["segments"][:2] == [(0, 2, [0]), (1, 2, [1])]
    assert second.dropped == []
    join.pop("e1")  # segment 0 now empty
    third = join.encoded_segments(cap=60)
    assert third.segments == [] and third.dropped == [0]
    assert [segment for segment, _, _ in third.layout["segments"]] == [1, 2, 3, 4, 5]
    assert join.encoded_segments(cap=60).dropped == []  # said once
    held = {**dict(first.segments), **dict(second.segments)}
    assert _entries(held, third.layout) == _kept(join)


def test_expired_and_evicted_entries_leave_their_segments_too():
    join = PendingJoin(4, 10.0)
    for i in range(4):
        join.add(f"e{i}", float(i), i)
    join.encoded_segments(cap=1)  # one entry per segment
    join.add("e4", 4.0, 4)  # evicts e0
    join.expire(12.5)  # e1 and e2 are older than 12.5 - 10
    delta = join.encoded_segments(cap=1)
    assert delta.dropped == [0, 1, 2]
    assert [segment for segment, _, _ in delta.layout["segments"]] == [3, 4]


def test_a_rebase_writes_every_waiting_entry_afresh():
    join = PendingJoin(100, 1e9)
    for i in range(6):
        join.add(f"e{i}", float(i), i)
    join.encoded_segments(cap=10_000)
    asked = join.encoded_segments(cap=10_000, rebase=True)
    assert asked.dropped == [0] and [s for s, _ in asked.segments] == [1]
    assert len(json.loads(asked.segments[0][1])) == 6
    for i in range(4):  # 4 of 6 gone: more gone than waiting, the next one rebases
        join.pop(f"e{i}")
    join.add("e6", 6.0, 6)
    delta = join.encoded_segments(cap=10_000)
    assert delta.dropped == [1] and delta.layout == {"next": 3, "segments": [(2, 3, [])]}
    assert [e[0] for e in json.loads(delta.segments[0][1])] == ["e4", "e5", "e6"]


def test_a_layout_that_does_not_fit_the_entries_is_refused_and_changes_nothing():
    join = PendingJoin(100, 1e9)
    for i in range(3):
        join.add(f"e{i}", float(i), i)
    state = join.state_dict()
    restored = PendingJoin(100, 1e9)
    bad = [({"next": 2, "segments": [(0, 2, [])]}, "holds 2 waiting entries, the join 3"),
           ({"next": 1, "segments": [(0, 4, [3]), (0, 1, [])]}, "out of order"),
           ({"next": 1, "segments": [(1, 3, [])]}, "out of order"),
           ({"next": 2, "segments": [(0, 2, [5])]}, "lists 1 gone")]
    for layout, message in bad:
        with pytest.raises(ValueError, match=message):
            restored.load_state_dict({**state, "segments": layout})
    restored.load_state_dict({**state, "segments": {"next": 4, "segments": [(3, 3, [])]}})
    assert restored.encoded_segments().layout == {"next": 4, "segments": [(3, 3, [])]}


def test_a_join_restored_from_its_segments_writes_what_the_original_writes():
    """Random adds, labels (in any order), evictions and expiries over 6,000 steps, a
    snapshot every few steps (sometimes a rebase), segments kept as a changelog keeps them
    (new ones added, dropped ones deleted). At each snapshot the layout and kept segments
    give back exactly the waiting entries, in order; a join restored from them then, fed
    the same steps, writes the same segments, layouts and drops as the original."""
    rng = random.Random(7)
    join = PendingJoin(60, 20.0)
    held: dict[int, str] = {}
    restored = None
    waiting: list[str] = []
    written = adds = 0
    for step in range(6000):
        now = step / 10
        if rng.random() < 0.55:
            event = f"e{step}"
            payload = {"p": [rng.random(), rng.random()], "k": step}
            adds += 1
            for target in (join, restored):
                if target is not None:
                    target.expire(now)
                    target.add(event, now, payload)
        elif join:
            ids = [e.id for e in join.waiting()]
            event = ids[0] if rng.random() < 0.2 else rng.choice(ids)
            for target in (join, restored):
                if target is not None:
                    target.pop(event)
        if step % rng.choice((3, 17, 60)) == 0:
            rebase = rng.random() < 0.05
            cap = rng.choice((200, 2000))
            delta = join.encoded_segments(cap=cap, rebase=rebase)
            if restored is not None:
                assert restored.encoded_segments(cap=cap, rebase=rebase) == delta, step
            written += sum(len(json.loads(text)) for _, text in delta.segments)
            held.update(delta.segments)
            for segment in delta.dropped:
                del held[segment]
            assert sorted(held) == [s for s, _, _ in delta.layout["segments"]]
            waiting = _kept(join)
            assert _entries(held, delta.layout) == waiting, step
            if rng.random() < 0.1:
                restored = PendingJoin(60, 20.0)
                restored.load_state_dict({"entries": _entries(held, delta.layout),
                                          "expired_total": 0, "evicted_total": 0,
                                          "joined_total": 0, "segments": delta.layout})
    assert join.expired_total > 0 and join.evicted_total > 0 and waiting
    # each prediction written about once: rebases (asked, or when more have left the
    # segments than wait) rewrite the waiting ones, paid for by those that left
    assert written < 2.5 * adds, (written, adds)
