"""``RecordLane.drain``: the service loop's inner loop in the core. It pulls ``(position,
raw)`` items one at a time, applies what the lane takes with nothing to route (moving
``position`` and ``records_seen`` as the loop would) and stops exactly where the loop
must act: a limit, a bound, a kill position, a stop request, a record for Python, the
end of the input. ``tests/service`` runs it inside the real loop (kill -9 points,
bounds, stops, the lane on and off); these pin each stop here."""

from __future__ import annotations

import pytest

from streamweights import _native, events
from streamweights.adapters import dumps_state
from streamweights.pipeline import Pipeline
from streamweights.runtime.service import (
    _DRAIN_APPLIED,
    _DRAIN_ENDED,
    _DRAIN_GENERAL,
    _DRAIN_PAUSED,
)
from tests.test_pipeline_batch import _replay, _streams


def _lane_and_items(n_events: int = 300, first: int = 0):
    pipeline = Pipeline(_streams("demo.yaml"))
    lane = pipeline.record_lane()
    assert lane is not None
    items = list(enumerate(_replay(n_events), first))
    return pipeline, lane, items


def _drain(lane, records, state, limit=10**9, stop=None, bound=None, kill_at=None,
           adapted=False):
    return lane.drain(records, state, adapted, limit, stop or _native.StopFlag(), bound,
                      kill_at)


def test_a_whole_input_is_applied_as_one_record_at_a_time():
    """Scenario: the demo's records drained to the end (every record handed back is
    applied the way the loop does: the general path, or the lane's result routed), next
    to the same records through ``lane.process`` one at a time.
    We expect: the same final state, byte for byte; ``position`` one past the last
    record drained (the loop moves it for those it is handed) and ``records_seen`` the
    number drained."""
    pipeline, lane, items = _lane_and_items()
    other, other_lane, _ = _lane_and_items()
    for _, raw in items:
        if other_lane.process(raw, False) is None:
            other.process(events.decode(raw))
    state = {"position": 0, "records_seen": 0}
    records, drained, handed = iter(items), 0, set()
    while True:
        done, status, item, _ = _drain(lane, records, state)
        drained += done
        if status == _DRAIN_ENDED:
            break
        assert status in (_DRAIN_GENERAL, _DRAIN_APPLIED) and item is not None
        handed.add(item[0])
        if status == _DRAIN_GENERAL:
            pipeline.process(events.decode(item[1]))
    assert drained + len(handed) == len(items) and drained > 0.9 * len(items)
    assert state["records_seen"] == drained
    assert state["position"] == 1 + max(p for p, _ in items if p not in handed)
    assert dumps_state(pipeline.state_dict()) == dumps_state(other.state_dict())


def test_it_pauses_at_the_limit_a_kill_position_a_bound_and_a_stop():
    """Scenario: drains with a limit of 5, a kill position, a bound and a stop request.
    We expect: at most 5 done, then paused with nothing pending; paused right after the
    record whose next position is the kill position; the record at the bound handed
    back unapplied; paused after one record once a stop is requested."""
    _, lane, items = _lane_and_items(first=100)
    records = iter(items)
    state = {"position": 100, "records_seen": 0}
    done, status, item, _ = _drain(lane, records, state, limit=5)
    assert (done, status, item) == (5, _DRAIN_PAUSED, None)
    assert state == {"position": 105, "records_seen": 5}
    done, status, item, _ = _drain(lane, records, state, kill_at=108)
    assert status == _DRAIN_PAUSED and item is None and state["position"] == 108
    done, status, item, _ = _drain(lane, records, state, bound=112)
    assert status == _DRAIN_PAUSED and state["position"] == 112
    done, status, item, _ = _drain(lane, records, state, bound=112)
    assert (done, status, item[0]) == (0, _DRAIN_GENERAL, 112)  # pulled, not applied
    assert state["position"] == 112
    stop = _native.StopFlag()
    stop.set()
    done, status, item, _ = _drain(lane, records, state, stop=stop)
    assert (done, status, item) == (1, _DRAIN_PAUSED, None) and stop.is_set()


def test_what_the_lane_does_not_take_goes_back_to_python():
    """Scenario: items that are not ``(position, bytes)`` (a rejected CSV row, a bare
    value), a record the lane does not take (malformed), an adapted record to route,
    an iterator that raises.
    We expect: each handed back with the status saying what to do with it, nothing
    applied for it; the iterator's exception propagates."""
    _, lane, items = _lane_and_items()
    state = {"position": 0, "records_seen": 0}
    odd = [(0, object()), "not a pair", (1, b'{"schema": 1, "stream": "demo"'), items[0]]
    records = iter(odd)
    for expected in odd[:3]:
        done, status, item, result = _drain(lane, records, state)
        assert (done, status, result) == (0, _DRAIN_GENERAL, None) and item is expected
    done, status, item, result = _drain(lane, records, state, adapted=True)
    assert (done, status) == (0, _DRAIN_APPLIED) and item is odd[3]
    assert type(result[1]) is bytes and state["records_seen"] == 0
    assert _drain(lane, records, state)[1] == _DRAIN_ENDED

    def failing():
        yield items[1]
        raise OSError("source gone")

    records = failing()
    with pytest.raises(OSError, match="source gone"):
        _drain(lane, records, state)
    assert state["records_seen"] == 1  # the record before it was applied
