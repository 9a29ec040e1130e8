"""RiseEvidence in the native core against its pure-Python reference (issue 11).

The core repeats the reference's arithmetic operation for operation (bets, the left-to-
right sum of the five statistics, Welford's moments, the baseline), so the two agree bit
for bit: alarms, statistic and baseline after every one of 10^5 values on drifting
streams. Both write a state in one layout (the two windows as float64 arrays), and
states written by either, or as plain lists by earlier releases, load into the other and
continue identically.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamweights import _native
from streamweights.adapters.drift_evidence import RiseEvidence
from tests.reference.drift_evidence import RiseEvidence as ReferenceRiseEvidence

N_EVENTS = 100_000


def _drifting_losses(seed: int, kind: str) -> list[float]:
    """0/1 errors or clipped log losses whose rate wanders and jumps up and down every
    ~7,000 values (rises the test should evidence, falls it must not)."""
    rng = np.random.default_rng(seed)
    segments = -(-N_EVENTS // 7000)
    rates = rng.uniform(0.02, 0.45, size=segments)
    rate = np.repeat(rates, 7000)[:N_EVENTS] * (1 + 0.2 * np.sin(np.arange(N_EVENTS) / 900))
    if kind == "zero_one":
        return (rng.random(N_EVENTS) < rate).astype(np.float64).tolist()
    if kind == "runs":  # dependent: each value repeats the previous one with prob. 0.8
        fresh = rng.random(N_EVENTS) < rate
        keep = rng.random(N_EVENTS) < 0.8
        for t in range(1, N_EVENTS):
            if keep[t]:
                fresh[t] = fresh[t - 1]
        return fresh.astype(np.float64).tolist()
    p = np.clip(1.0 - rate * rng.exponential(1.0, N_EVENTS), 1e-6, 1.0)
    return (-np.log(p)).tolist()


def _bits(value: float | None) -> int | None:
    return None if value is None else np.float64(value).view(np.int64).item()


def _plain(state: object) -> object:
    """A state with its arrays as lists (both give the windows as float64 arrays), for
    ``==`` and JSON."""
    if isinstance(state, dict):
        return {key: _plain(value) for key, value in state.items()}
    if isinstance(state, tuple):
        return tuple(_plain(value) for value in state)
    return state.tolist() if isinstance(state, np.ndarray) else state


@pytest.mark.parametrize(("seed", "kind", "options"), [
    (0, "zero_one", {}),
    (1, "log", {}),
    (2, "zero_one", {"significance": 1e-3, "margin": 0.0, "warmup": 50, "lag": 0}),
    (3, "log", {"significance": 1e-2, "margin": 0.3, "warmup": 2, "lag": 37,
                "min_rise": 1e-9}),
    (4, "runs", {}),
    (5, "runs", {"significance": 1e-3, "warmup": 20, "lag": 0}),
])
def test_core_matches_reference_bit_for_bit(seed: int, kind: str,
                                            options: dict[str, float]) -> None:
    """Scenario: 10^5 drifting losses into both, resetting after each alarm (as the
    pipeline does); on the ``runs`` streams the losses are dependent, so the dependence
    measure, the block bets and the pooling across resets all take part. Every alarm,
    statistic, baseline, inflation and wander is the same float; there were alarms to
    compare."""
    core, reference = RiseEvidence(**options), ReferenceRiseEvidence(**options)
    alarms, inflation = 0, 1.0
    for step, value in enumerate(_drifting_losses(seed, kind)):
        alarm = core.update(value)
        assert alarm == reference.update(value), step
        assert _bits(core.statistic) == _bits(reference.statistic), step
        assert _bits(core.baseline) == _bits(reference.baseline), step
        assert _bits(core.inflation) == _bits(reference.inflation), step
        assert _bits(core.wander) == _bits(reference.wander), step
        inflation = max(inflation, core.inflation)
        if alarm:
            alarms += 1
            core.reset()
            reference.reset()
    assert alarms > 0
    assert _plain(core.get_state()) == _plain(reference.get_state())
    if kind == "runs":
        assert inflation > 3.0


@pytest.mark.parametrize("kind", ["zero_one", "log", "runs"])
def test_state_round_trip_both_ways(kind: str) -> None:
    """Scenario: states written every 9,973 values (through JSON) by the reference load into
    the core and by the core into the reference; both continue bit for bit."""
    losses = _drifting_losses(7, kind)[:40_000]
    core, reference = RiseEvidence(), ReferenceRiseEvidence()
    for start in range(0, len(losses), 9973):
        for value in losses[start:start + 9973]:
            assert core.update(value) == reference.update(value)
        written = json.loads(json.dumps(_plain(reference.get_state())))
        assert written == json.loads(json.dumps(_plain(core.get_state())))
        core = RiseEvidence()
        core.set_state(written)
        reference = ReferenceRiseEvidence()
        reference.set_state(json.loads(json.dumps(_plain(core.get_state()))))
        assert _bits(core.statistic) == _bits(reference.statistic)


def test_bad_input_leaves_state_bit_identical() -> None:
    """Scenario: NaN, inf, a negative loss and a damaged state are refused with a message
    naming the field; the state afterwards is what it was."""
    evidence = RiseEvidence(warmup=2, lag=3)
    for value in _drifting_losses(11, "zero_one")[:500]:
        evidence.update(value)
    before = _plain(evidence.get_state())
    for value in (math.nan, math.inf, -0.5):
        with pytest.raises(ValueError, match="loss: must be a finite number >= 0"):
            evidence.update(value)
        assert _plain(evidence.get_state()) == before
    damaged = {**before, "statistics": before["statistics"][:3]}
    with pytest.raises(ValueError, match=r"state\.evidence\.statistics: expected 5 values"):
        evidence.set_state(damaged)
    damaged = {**before, "dependence": before["dependence"][:7]}
    with pytest.raises(ValueError, match=r"state\.evidence\.dependence: expected 40 values"):
        evidence.set_state(damaged)
    with pytest.raises((ValueError, TypeError)):
        evidence.set_state({**before, "recent": ["x"]})
    assert _plain(evidence.get_state()) == before


def test_core_update_many_equals_loop() -> None:
    """Scenario: the core's batch update over 20,000 values equals its per-value loop,
    flags and final state; a bad value anywhere in a batch changes nothing."""
    losses = _drifting_losses(5, "log")[:20_000]
    batch, loop = (_native.RiseEvidence(1e-2, 0.0, 50, 20, 0.005) for _ in range(2))
    flags = batch.update_many(losses)
    assert flags == [loop.update(value) for value in losses]
    assert any(flags)
    assert _plain(batch.get_state()) == _plain(loop.get_state())
    with pytest.raises(ValueError, match=r"losses\[2\]"):
        batch.update_many([0.1, 0.2, math.nan])
    assert _plain(batch.get_state()) == _plain(loop.get_state())


def test_pickle_and_deepcopy_carry_the_core_state() -> None:
    """Scenario: a RiseEvidence after 5,000 values is pickled and deep-copied. We expect
    copies with the same state that continue bit for bit."""
    import copy
    import pickle

    losses = _drifting_losses(13, "log")[:10_000]
    evidence = RiseEvidence(significance=1e-3, lag=20)
    for value in losses[:5000]:
        evidence.update(value)
    copies = [pickle.loads(pickle.dumps(evidence)), copy.deepcopy(evidence)]
    for value in losses[5000:]:
        alarm = evidence.update(value)
        assert all(other.update(value) == alarm for other in copies)
    assert all(_plain(other.get_state()) == _plain(evidence.get_state()) for other in copies)


@pytest.mark.parametrize("kind", ["zero_one", "runs"])
def test_a_state_from_before_the_dependence_measure_loads_in_both(kind: str) -> None:
    """Scenario: a state as written before the dependence measure (no ``dependence``
    key) after 30,000 values, loaded into the core and into the reference.
    We expect: both load it, measure the dependence afresh (v = 1 at first) and continue
    bit for bit with each other."""
    losses = _drifting_losses(9, kind)[:60_000]
    writer = RiseEvidence()
    for value in losses[:30_000]:
        writer.update(value)
    old = {k: v for k, v in writer.get_state().items() if k != "dependence"}
    core, reference = RiseEvidence(), ReferenceRiseEvidence()
    core.set_state(old)
    reference.set_state(old)
    assert core.inflation == reference.inflation == 1.0
    assert _bits(core.baseline) == _bits(reference.baseline)
    for value in losses[30_000:]:
        assert core.update(value) == reference.update(value)
        assert _bits(core.statistic) == _bits(reference.statistic)
    assert _plain(core.get_state()) == _plain(reference.get_state())


def test_update_log_losses_equals_the_python_loop_bit_for_bit():
    """The pipeline feeds every tracked stage's loss in one call (``update_log_losses``):
    the same clipped log-losses and statistics, bit for bit, as ``update(-math.log(min(
    max(p, clip), 1.0)))`` per stage, for arrays and lists, probabilities at 0, 1, below
    the clip and in between; a label outside the output is refused."""
    from streamweights.adapters.drift_evidence import update_log_losses

    rng = np.random.default_rng(8)
    ours = [RiseEvidence(warmup=20, lag=10) for _ in range(3)]
    loop = [RiseEvidence(warmup=20, lag=10) for _ in range(3)]
    for t in range(20_000):
        p = rng.dirichlet([0.3, 0.3, 0.3], size=3)
        p[t % 3, t % 7 % 3] = (0.0, 1.0, 1e-9, 1e-6)[t % 4]
        outputs = [p[0], p[1].tolist(), p[2]]
        label = int(rng.integers(3))
        update_log_losses([e._core for e in ours], outputs, label, 1e-6)
        for evidence, output in zip(loop, outputs, strict=True):
            evidence.update(-math.log(min(max(float(output[label]), 1e-6), 1.0)))
    assert [_plain(e.get_state()) for e in ours] == [_plain(e.get_state()) for e in loop]
    with pytest.raises(ValueError, match="label"):
        update_log_losses([ours[0]._core], [p[0]], 3, 1e-6)


def test_the_windows_are_arrays_and_list_states_load_alike() -> None:
    """Scenario: after 3,000 dependent losses, the state's two windows are float64 arrays
    holding the reference's floats. The state as it is, as plain lists (records written
    before the windows were arrays) and with its windows as strided views loads into
    three fresh evidences; all four continue with the same alarms and state for 5,000
    more values. A window of the wrong shape or kind is refused."""
    losses = _drifting_losses(17, "runs")[:8000]
    evidence, reference = RiseEvidence(warmup=20, lag=30), ReferenceRiseEvidence(warmup=20, lag=30)
    for value in losses[:3000]:
        evidence.update(value)
        reference.update(value)
    state = evidence.get_state()
    for key, length in (("recent", 30), ("dependence", 40)):
        assert type(state[key]) is np.ndarray and state[key].dtype == np.float64
        assert state[key].shape == (length,)
        assert state[key].tolist() == _plain(reference.get_state())[key]
    strided = {**state, **{key: np.repeat(state[key], 2)[::2]
                           for key in ("recent", "dependence")}}
    assert not strided["recent"].flags.c_contiguous
    copies = []
    for form in (state, _plain(state), strided):
        copy = RiseEvidence(warmup=20, lag=30)
        copy.set_state(form)
        copies.append(copy)
    for value in losses[3000:]:
        alarm = evidence.update(value)
        assert [copy.update(value) for copy in copies] == [alarm] * 3
    assert all(_plain(copy.get_state()) == _plain(evidence.get_state()) for copy in copies)
    before = _plain(evidence.get_state())
    for bad in (np.zeros((2, 20)), np.array(["x"] * 30), None):
        with pytest.raises((ValueError, TypeError)):
            evidence.set_state({**evidence.get_state(), "recent": bad})
    assert _plain(evidence.get_state()) == before
