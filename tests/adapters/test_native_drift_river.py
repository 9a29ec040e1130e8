"""The core's ADWIN and Page-Hinkley against river's own, value for value (issue 11 item 3).

river stays the reference for drift detection: the port in ``native/src/adwin.rs`` and
``native/src/page_hinkley.rs`` must raise its alarms at exactly the same positions and
report exactly the same window (width, estimation, variance) or running sums, on long
streams of every kind a loss stream takes, under several parameter settings.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from river import drift as river_drift

from streamweights import _native

#: 5 change patterns x 50 seeds x 4,000 values = 10^6 values per detector.
PATTERNS = ("abrupt", "gradual", "variance", "bernoulli", "none")
SEEDS = range(50)
LENGTH = 4000

#: Parameter settings, cycled over the seeds: river's defaults, the extremes of the clock
#: and of the bucket count, small and large minimum windows.
ADWIN_SETTINGS = (
    {},
    {"clock": 1},
    {"delta": 0.05, "max_buckets": 2, "min_window_length": 2, "grace_period": 5},
    {"delta": 0.0001, "clock": 7, "max_buckets": 8, "min_window_length": 20,
     "grace_period": 100},
)
#: river's defaults; DriftMemory's standardised defaults (δ = 0.5, λ = 50); frequent
#: alarms; one-sided tests; no fading (α = 1).
PAGE_HINKLEY_SETTINGS = (
    {},
    {"delta": 0.5, "threshold": 50.0},
    {"delta": 0.05, "threshold": 5.0, "min_instances": 10},
    {"mode": "up", "threshold": 10.0},
    {"mode": "down", "threshold": 10.0, "alpha": 1.0},
)


def _stream(pattern: str, seed: int, n: int = LENGTH) -> list[float]:
    """``n`` values of one change pattern; change points drawn from the seed."""
    rng = np.random.default_rng([11, seed, PATTERNS.index(pattern)])
    if pattern == "abrupt":  # three jumps of the mean, by 0.5 to 2 standard deviations
        cuts = np.sort(rng.choice(np.arange(200, n - 200), size=3, replace=False))
        means = np.repeat(np.cumsum(rng.choice([-1, 1], 4) * rng.uniform(0.5, 2.0, 4)),
                          np.diff(np.concatenate([[0], cuts, [n]])))
        values = means + rng.normal(size=n)
    elif pattern == "gradual":  # the mean drifts from 0 to 1.5 over a ramp of 300-1500
        start = int(rng.integers(500, n // 2))
        ramp = int(rng.integers(300, 1500))
        mean = 1.5 * np.clip((np.arange(n) - start) / ramp, 0.0, 1.0)
        values = mean + rng.normal(scale=0.5, size=n)
    elif pattern == "variance":  # same mean, standard deviation 0.1 -> 1 -> 0.3
        scale = np.where(np.arange(n) < n // 3, 0.1, np.where(np.arange(n) < 2 * n // 3,
                                                                1.0, 0.3))
        values = 0.5 + scale * rng.normal(size=n)
    elif pattern == "bernoulli":  # 0/1 errors at rates 0.1 -> 0.4 -> 0.2
        rate = np.where(np.arange(n) < n // 2, 0.1, np.where(np.arange(n) < 3 * n // 4,
                                                               0.4, 0.2))
        values = (rng.random(n) < rate).astype(np.float64)
    else:  # no change: Bernoulli(0.1) errors or Gaussian noise, half the seeds each
        values = ((rng.random(n) < 0.1).astype(np.float64) if seed % 2
                  else rng.normal(size=n))
    return values.tolist()


def _adwin_trace(detector, values):
    """Per value: (alarm, width, estimation, variance, n_detections)."""
    trace = []
    for value in values:
        detector.update(value)
        trace.append((detector.drift_detected, detector.width, detector.estimation,
                      detector.variance, detector.n_detections))
    return trace


def _page_hinkley_trace_river(detector, values):
    trace = []
    for value in values:
        detector.update(value)
        trace.append((detector.drift_detected, detector._sum_increase, detector._min_increase,
                      detector._sum_decrease, detector._max_decrease, detector._x_mean.n,
                      detector._x_mean._mean))
    return trace


def _page_hinkley_trace_native(detector, values):
    trace = []
    for value in values:
        detector.update(value)
        trace.append((detector.drift_detected, *detector.sums()))
    return trace


def _alarms(trace):
    return [index for index, step in enumerate(trace) if step[0]]


def _first_difference(ours, theirs):
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            return index, a, b
    return None


@pytest.mark.slow
def test_adwin_detections_and_window_equal_rivers_over_a_million_values():
    """Scenario: 10^6 values (5 change patterns x 50 seeds x 4,000), river's ADWIN and the
    core's fed the same values, four parameter settings cycled over the seeds.
    We expect: the same alarm positions on every stream, and after every value the same
    width, estimation, variance and detection count (exact float equality); the batch
    verb finds the same alarms; the streams do raise alarms (more on changing streams)."""
    started = time.perf_counter()
    alarms_by_pattern = dict.fromkeys(PATTERNS, 0)
    total = 0
    for pattern in PATTERNS:
        for seed in SEEDS:
            values = _stream(pattern, seed)
            settings = ADWIN_SETTINGS[seed % len(ADWIN_SETTINGS)]
            theirs = _adwin_trace(river_drift.ADWIN(**settings), values)
            ours = _adwin_trace(_native.Adwin(**settings), values)
            where = f"{pattern} seed {seed} {settings}"
            assert _alarms(ours) == _alarms(theirs), where
            assert ours == theirs, f"{where}: first difference {_first_difference(ours, theirs)}"
            assert _native.Adwin(**settings).update_many(values) == _alarms(theirs), where
            alarms_by_pattern[pattern] += len(_alarms(theirs))
            total += len(values)
    assert total >= 10**6
    # Not vacuous: every changing pattern raises alarms (ADWIN tests means, so a variance change
    # raises the fewest), the stationary one fewer than abrupt jumps.
    assert min(alarms_by_pattern[p] for p in PATTERNS if p != "none") >= 20, alarms_by_pattern
    assert alarms_by_pattern["none"] < alarms_by_pattern["abrupt"], alarms_by_pattern
    print(f"ADWIN: {total} values, alarms {alarms_by_pattern}, "
          f"{time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_page_hinkley_detections_and_sums_equal_rivers_over_a_million_values():
    """Scenario: the same 10^6 values through river's PageHinkley and the core's, five
    parameter settings (both, up and down tests, α = 1) cycled over the seeds.
    We expect: the same alarm positions, and after every value the same six running sums
    (exact float equality); the batch verb finds the same alarms; alarms do happen."""
    started = time.perf_counter()
    alarms_by_pattern = dict.fromkeys(PATTERNS, 0)
    total = 0
    for pattern in PATTERNS:
        for seed in SEEDS:
            values = _stream(pattern, seed)
            settings = PAGE_HINKLEY_SETTINGS[seed % len(PAGE_HINKLEY_SETTINGS)]
            theirs = _page_hinkley_trace_river(river_drift.PageHinkley(**settings), values)
            ours = _page_hinkley_trace_native(_native.PageHinkley(**settings), values)
            where = f"{pattern} seed {seed} {settings}"
            assert _alarms(ours) == _alarms(theirs), where
            assert ours == theirs, f"{where}: first difference {_first_difference(ours, theirs)}"
            assert _native.PageHinkley(**settings).update_many(values) == _alarms(theirs), where
            alarms_by_pattern[pattern] += len(_alarms(theirs))
            total += len(values)
    assert total >= 10**6
    assert min(alarms_by_pattern[p] for p in PATTERNS if p != "none") >= 20, alarms_by_pattern
    print(f"Page-Hinkley: {total} values, alarms {alarms_by_pattern}, "
          f"{time.perf_counter() - started:.1f} s")


def test_adwin_window_bytes_equal_rivers_and_load_both_ways():
    """Scenario: a 200,000-value Bernoulli stream with two changes (a deep window: many
    histogram rows); at 20 points the window state is read from both detectors, and each
    state is loaded into the other kind, which then continues on the rest of the stream.
    We expect: the bytes are identical to river's ``__getstate__`` at every point, and a
    detector restored from river's bytes (an old DriftMemory snapshot) continues exactly
    as river does, and river restored from ours continues exactly as ours."""
    rng = np.random.default_rng(3)
    rate = np.where(np.arange(200_000) < 120_000, 0.05, 0.08)
    rate[180_000:] = 0.3
    values = (rng.random(200_000) < rate).astype(np.float64).tolist()
    theirs, ours = river_drift.ADWIN(), _native.Adwin()
    checkpoints = set(rng.choice(200_000, size=20, replace=False).tolist())
    for index, value in enumerate(values):
        theirs.update(value)
        ours.update(value)
        if index in checkpoints or (theirs.drift_detected and index % 2):
            river_bytes = theirs._helper.__getstate__()
            assert ours.window_state() == river_bytes, index
            tail = values[index + 1:index + 3001]
            from_river = _native.Adwin()
            from_river.load_window_state(river_bytes, theirs.drift_detected)
            river_from_ours = river_drift.ADWIN()
            river_from_ours._helper.__setstate__(ours.window_state())
            river_from_ours._drift_detected = ours.drift_detected
            assert _adwin_trace(from_river, tail) == _adwin_trace(river_from_ours, tail), index
    assert theirs.width == ours.width and theirs.width > 1000


@pytest.mark.parametrize("damage", ["truncated", "extended", "other_parameters", "nan_total",
                                    "wrong_width", "row_overfull"])
def test_adwin_refuses_damaged_window_bytes_and_keeps_its_state(damage):
    """Scenario: window bytes cut short, extended, written with other parameters, with a
    NaN total, a width that does not match the rows, or a row fuller than allowed.
    We expect: ValueError naming the ADWIN window state, and the detector unchanged."""
    source = _native.Adwin()
    for value in np.random.default_rng(5).random(500).tolist():
        source.update(value)
    good = bytearray(source.window_state())
    if damage == "truncated":
        bad = good[:-3]
    elif damage == "extended":
        bad = good + b"\0"
    elif damage == "other_parameters":
        bad = bytearray(_native.Adwin(clock=1).window_state())
    elif damage == "nan_total":
        bad = good[:36] + np.array([np.nan]).tobytes() + good[44:]
    elif damage == "wrong_width":
        bad = good[:52] + np.array([3.0]).tobytes() + good[60:]
    else:  # row 0's used count (after the 4 i32 counters and the row count) above max
        bad = good[:100] + np.array([6], dtype="<u8").tobytes() + good[108:]
    target = _native.Adwin()
    for value in (0.1, 0.9, 0.5):
        target.update(value)
    before = bytes(target.window_state())
    with pytest.raises(ValueError, match="ADWIN window state"):
        target.load_window_state(bytes(bad), False)
    assert target.window_state() == before


@pytest.mark.parametrize(("factory", "settings"), [
    (_native.Adwin, {"clock": 0}), (_native.Adwin, {"max_buckets": 0}),
    (_native.Adwin, {"delta": 0.0}), (_native.Adwin, {"delta": float("nan")}),
    (_native.PageHinkley, {"mode": "sideways"}),
    (_native.PageHinkley, {"threshold": float("inf")}),
])
def test_parameters_river_would_crash_on_are_refused_at_construction(factory, settings):
    """Scenario: parameters with which river's detector panics at the first update (clock
    0, no buckets) or never means anything (δ of 0 or NaN), or that it refuses (mode).
    We expect: ValueError when the detector is built, naming the parameter."""
    with pytest.raises(ValueError, match=next(iter(settings))):
        factory(**settings)
