"""The pending-label join: bounded in count and in event-time age, nothing leaves silently."""

from __future__ import annotations

import gc
import random
import weakref
from collections import OrderedDict

import numpy as np
import pytest

from streamweights.adapters import dumps_state, loads_state
from streamweights.join import Pending, PendingJoin


def _ids(entries):
    return [entry.id for entry in entries]


def test_add_then_pop_joins():
    join = PendingJoin(max_pending=3, ttl_seconds=10.0)
    assert join.add("a", 1.0, {"served": [0.2, 0.8]}) == []
    assert "a" in join and len(join) == 1
    entry = join.pop("a")
    assert (entry.id, entry.ts, entry.payload) == ("a", 1.0, {"served": [0.2, 0.8]})
    assert "a" not in join and len(join) == 0
    assert join.joined_total == 1
    assert join.pop("a") is None  # a second label for the same id finds nothing
    assert join.joined_total == 1


def test_duplicate_id_is_refused_and_changes_nothing():
    join = PendingJoin(max_pending=2)
    join.add("a", 1.0, "first")
    join.add("b", 2.0, "second")
    before = join.state_dict()
    with pytest.raises(ValueError, match=r"^id: .*'a'"):
        join.add("a", 3.0, "again")
    assert join.state_dict() == before  # no eviction happened to make room either


def test_capacity_evicts_oldest_first_and_counts():
    join = PendingJoin(max_pending=3)
    for i in range(3):
        assert join.add(f"e{i}", float(i), i) == []
    evicted = join.add("e3", 3.0, 3)
    assert _ids(evicted) == ["e0"]
    assert join.evicted_total == 1
    join.pop("e2")
    assert join.add("e4", 4.0, 4) == []  # a label made room
    assert _ids(join.add("e5", 5.0, 5)) == ["e1"]
    assert join.evicted_total == 2
    assert len(join) == 3


def test_ttl_expires_oldest_first_in_event_time_and_counts():
    join = PendingJoin(max_pending=100, ttl_seconds=10.0)
    for i in range(6):
        join.add(f"e{i}", float(i), i)
    assert join.expire(10.0) == []  # e0 is exactly ttl old: not yet expired
    assert _ids(join.expire(12.5)) == ["e0", "e1", "e2"]
    assert join.expired_total == 3
    assert _ids(join.expire(12.5)) == []
    assert _ids(join.expire(100.0)) == ["e3", "e4", "e5"]
    assert join.expired_total == 6 and len(join) == 0


def test_out_of_order_prediction_expires_when_it_reaches_the_head():
    join = PendingJoin(ttl_seconds=10.0)
    join.add("late", 50.0, None)
    join.add("early", 1.0, None)  # arrived after "late" though older in event time
    assert join.expire(55.0) == []  # the head is young: nothing behind it is looked at
    assert _ids(join.expire(61.0)) == ["late", "early"]


def test_invalid_bounds_are_refused():
    with pytest.raises(ValueError, match="max_pending"):
        PendingJoin(max_pending=0)
    for ttl in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl_seconds"):
            PendingJoin(ttl_seconds=ttl)


def test_random_operations_never_exceed_the_bound_and_account_for_every_entry():
    """Scenario: 20,000 random adds (some duplicates), pops (some unknown) and expiries
    on a join of 37 entries, checked against a plain ordered-dict model. We expect: the
    join never holds more than 37 entries, returns exactly the entries the model evicts
    and expires (oldest first), and every added entry is accounted for once as joined,
    evicted, expired or still pending."""
    rng = random.Random(5)
    join = PendingJoin(max_pending=37, ttl_seconds=30.0)
    model: OrderedDict[str, float] = OrderedDict()
    added = evicted_seen = expired_seen = joined_seen = duplicates = 0
    now = 0.0
    for step in range(20_000):
        now += rng.expovariate(1.0)
        op = rng.random()
        if op < 0.55:
            if model and rng.random() < 0.05:  # a duplicate of a waiting prediction
                with pytest.raises(ValueError):
                    join.add(rng.choice(list(model)), now, step)
                duplicates += 1
                assert len(join) == len(model)
                continue
            event_id = f"n{step}"
            expected = []
            while len(model) >= 37:
                expected.append(model.popitem(last=False)[0])
            model[event_id] = now
            out = join.add(event_id, now, step)
            assert _ids(out) == expected
            added += 1
            evicted_seen += len(out)
        elif op < 0.9:
            candidates = list(model) or ["missing"]
            event_id = rng.choice(candidates) if rng.random() < 0.9 else f"x{step}"
            entry = join.pop(event_id)
            if event_id in model:
                assert entry is not None and entry.ts == model.pop(event_id)
                joined_seen += 1
            else:
                assert entry is None
        else:
            expected = []
            while model and next(iter(model.values())) < now - 30.0:
                expected.append(model.popitem(last=False)[0])
            out = join.expire(now)
            assert _ids(out) == expected
            expired_seen += len(out)
        assert len(join) <= 37
        assert len(join) == len(model)
    assert (join.evicted_total, join.expired_total, join.joined_total) == (
        evicted_seen, expired_seen, joined_seen)
    assert evicted_seen > 0 and expired_seen > 0 and joined_seen > 0 and duplicates > 0
    assert added == joined_seen + evicted_seen + expired_seen + len(join)


def test_state_round_trip_restores_order_and_counters():
    """Scenario: a join with evictions, expiries and joins behind it is snapshotted
    through the JSON state codec and loaded into a fresh one. We expect: the same
    entries in the same order and the same counters, and both joins then evict, expire
    and join identically."""
    rng = np.random.default_rng(3)
    join = PendingJoin(max_pending=8, ttl_seconds=5.0)
    for i in range(30):
        join.add(f"e{i}", float(i), {"trace": [rng.random(3), rng.random(2)],
                                     "served": rng.random(2)})
        if i % 4 == 0:
            join.pop(f"e{i - 1}")
        if i % 7 == 0:
            join.expire(float(i))
    assert join.evicted_total and join.expired_total and join.joined_total
    text = dumps_state(join.state_dict())
    restored = PendingJoin(max_pending=8, ttl_seconds=5.0)
    restored.load_state_dict(loads_state(text))
    assert dumps_state(restored.state_dict()) == text
    assert [e.id for e in restored.waiting()] == [e.id for e in join.waiting()]
    for ours, theirs in zip(join.waiting(), restored.waiting(), strict=True):
        assert ours.ts == theirs.ts
        assert np.array_equal(ours.payload["served"], theirs.payload["served"])
    assert (restored.evicted_total, restored.expired_total, restored.joined_total) == (
        join.evicted_total, join.expired_total, join.joined_total)
    for i in range(30, 45):
        assert _ids(join.add(f"e{i}", float(i), None)) == _ids(
            restored.add(f"e{i}", float(i), None))
        assert _ids(join.expire(i + 1.5)) == _ids(restored.expire(i + 1.5))
    assert dumps_state(restored.state_dict()) == dumps_state(join.state_dict())


def test_state_dict_is_a_snapshot_not_a_view():
    join = PendingJoin()
    join.add("a", 1.0, None)
    state = join.state_dict()
    join.add("b", 2.0, None)
    join.pop("a")
    assert [entry[0] for entry in state["entries"]] == ["a"]
    assert state["joined_total"] == 0


def test_head_ts_is_the_oldest_entrys_event_time_after_every_operation():
    """``head_ts`` lets the per-record path skip ``expire`` when it has nothing to do, so
    it must be exactly the head's ts (``inf`` when empty) after every change: adds
    (out of order too), evictions, pops of the head and of others, expiries, a
    restore. A stale value would skip an expiry (or hold one)."""
    rng = random.Random(5)
    join = PendingJoin(max_pending=6, ttl_seconds=5.0)
    assert join.head_ts == float("inf")
    now, ids = 0.0, []
    for step in range(3_000):
        draw = rng.random()
        if draw < 0.45:
            now += rng.random()
            event_id = f"e{step}"
            join.add(event_id, now - rng.random() * 3, None)  # some arrive out of order
            ids.append(event_id)
        elif draw < 0.75 and ids:
            join.pop(ids.pop(rng.randrange(len(ids))))
        elif draw < 0.9:
            expired = join.expire(now)
            skipped = join.head_ts >= now - join.ttl_seconds
            assert skipped == (join.expire(now) == [])  # what the pipeline's test relies on
            assert all(entry.ts < now - 5.0 for entry in expired)
        else:
            restored = PendingJoin(max_pending=6, ttl_seconds=5.0)
            restored.load_state_dict(loads_state(dumps_state(join.state_dict())))
            join = restored
        oldest = next(iter(join.state_dict()["entries"]), None)
        assert join.head_ts == (float("inf") if oldest is None else oldest[1])


def test_a_pending_entry_reads_compares_and_is_collected_as_a_dataclass_would():
    """Scenario: ``Pending`` (native since the record lane makes one per prediction).
    We expect: its three fields as given (the same objects), read-only; equality field by
    field; a dataclass-style repr; a cycle through its payload collected."""
    payload = {"buffer": [0.25, 0.75]}
    entry = Pending("p-1", 12.5, payload)
    assert entry.id == "p-1" and entry.ts == 12.5 and entry.payload is payload
    with pytest.raises(AttributeError):
        entry.payload = {}
    assert entry == Pending("p-1", 12.5, {"buffer": [0.25, 0.75]})
    assert entry != Pending("p-1", 13.0, payload) and entry != ("p-1", 12.5, payload)
    assert repr(entry) == "Pending(id='p-1', ts=12.5, payload={'buffer': [0.25, 0.75]})"

    class Box:
        pass

    box = Box()
    box.entry = Pending("p-2", 1.0, box)  # a cycle: box -> entry -> payload (box)
    gone = weakref.ref(box)
    del box
    gc.collect()
    assert gone() is None


def test_an_entry_left_waiting_while_many_join_behind_it_stays_the_head():
    """Scenario: the native join keeps arrival order in a queue whose places go stale as
    labels take entries from the middle (swept once stale places outnumber live ones).
    One prediction never gets its label while 20,000 others arrive and are joined behind
    it, a few left waiting. We expect: it stays the head (``head_ts``) throughout, it
    expires first when its time comes, then the waiting ones in arrival order, and
    ``waiting()`` always lists exactly the waiting entries in arrival order."""
    join = PendingJoin(max_pending=1_000, ttl_seconds=100_000.0)
    join.add("old", 0.0, None)
    left = ["old"]
    for step in range(1, 20_001):
        join.add(f"e{step}", float(step), None)
        if step % 5_000 == 0:
            left.append(f"e{step}")  # left waiting
        else:
            assert join.pop(f"e{step}").ts == float(step)
        assert join.head_ts == 0.0
    assert _ids(join.waiting()) == left and len(join) == len(left)
    assert join.joined_total == 20_000 - 4
    assert _ids(join.expire(100_000.5)) == ["old"]
    assert join.head_ts == 5_000.0
    assert _ids(join.expire(200_000.0)) == left[1:]
    assert join.head_ts == float("inf") and join.waiting() == []


def test_bounds_can_be_changed_and_are_checked_as_at_construction():
    """Scenario: a join's bounds are set after it holds entries (as the OrderedDict join's
    plain attributes could be). We expect: a bad bound is refused with the constructor's
    message and changes nothing; a lower max_pending evicts the oldest at the next add, a
    shorter TTL expires at the next expire."""
    join = PendingJoin(max_pending=5, ttl_seconds=100.0)
    for i in range(5):
        join.add(f"e{i}", float(i), None)
    with pytest.raises(ValueError, match="max_pending: must be >= 1, got 0"):
        join.max_pending = 0
    with pytest.raises(ValueError, match="ttl_seconds: must be > 0, got nan"):
        join.ttl_seconds = float("nan")
    assert (join.max_pending, join.ttl_seconds) == (5, 100.0)
    join.max_pending = 3
    assert _ids(join.add("e5", 5.0, None)) == ["e0", "e1", "e2"]
    join.ttl_seconds = 1.0
    assert _ids(join.expire(4.5)) == ["e3"] and _ids(join.waiting()) == ["e4", "e5"]
