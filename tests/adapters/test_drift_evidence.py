"""Drift reactions need evidence of a rise (issue 14 item 3): RiseEvidence and DriftMemory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import DriftMemory
from streamweights.adapters.drift_evidence import RiseEvidence


def _bernoulli(rng, rates_and_lengths):
    return np.concatenate([(rng.random(n) < rate).astype(float)
                           for rate, n in rates_and_lengths]).tolist()


def _log_losses(rng, n, sharpness):
    """Log-losses of a binary forecaster that is calibrated (sharpness 1) or
    overconfident (> 1) on a stationary stream: heavy-tailed, unbounded above 0."""
    z = rng.normal(scale=1.5, size=n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-z))
    p = 1.0 / (1.0 + np.exp(-sharpness * (z + rng.normal(scale=0.5, size=n))))
    p_label = np.where(y, p, 1.0 - p)
    return (-np.log(np.maximum(p_label, 1e-6))).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_at_most_one_drift_per_100k_stationary_values(detector):
    """Scenario (must-hold 3): six stationary streams of 100,000 monitored values each
    (seeds 0-5): 0/1 errors at rates 0.02, 0.1 and 0.3, and log-losses of a calibrated and
    of an overconfident forecaster.
    We expect: at most one drift per 100,000 values on every stream."""
    streams = [_bernoulli(np.random.default_rng(0), [(0.02, 100_000)]),
               _bernoulli(np.random.default_rng(1), [(0.1, 100_000)]),
               _bernoulli(np.random.default_rng(2), [(0.3, 100_000)]),
               _log_losses(np.random.default_rng(3), 100_000, 1.0),
               _log_losses(np.random.default_rng(4), 100_000, 3.0),
               _bernoulli(np.random.default_rng(5), [(0.1, 100_000)])]
    drifts = []
    for values in streams:
        memory = DriftMemory(capacity=64, n_classes=2, detector=detector)
        for value in values:
            memory.update_loss(value)
        drifts.append(memory.drift_count)
    assert max(drifts) <= 1, drifts


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_falling_loss_raises_an_alarm_but_no_drift(detector):
    """Scenario: the monitored 0/1 error falls from 0.4 to 0.1 (an upstream adapter got
    better), five seeds. Before the evidence test every such detector alarm was a drift:
    the memory was evicted and the pipeline reset the chain.
    We expect: the detector alarms (as before: ``significance=None`` counts them), but
    with the evidence test no drift is counted and the alarms lapse as unconfirmed."""
    for seed in range(5):
        errors = _bernoulli(np.random.default_rng(seed), [(0.4, 3000), (0.1, 3000)])
        before = DriftMemory(capacity=64, n_classes=2, detector=detector, significance=None)
        after = DriftMemory(capacity=64, n_classes=2, detector=detector)
        for error in errors:
            before.update_loss(error)
            after.update_loss(error)
        assert before.drift_count >= 1
        assert after.drift_count == 0
        assert after.unconfirmed_count >= 1


def test_evidence_finds_rises_and_not_falls():
    """Scenario: RiseEvidence (α = 1e-5) on 0/1 errors that rise 0.1 -> 0.4, 0.1 -> 0.2,
    or fall 0.3 -> 0.1, after 3,000 values (ten seeds).
    We expect: the strong rise is evidenced within 150 values, the mild one within 2,000,
    the fall never, and nothing before the change."""
    delays = {"strong": [], "mild": []}
    for seed in range(10):
        for name, after in (("strong", 0.4), ("mild", 0.2)):
            evidence = RiseEvidence()
            values = _bernoulli(np.random.default_rng(seed), [(0.1, 3000), (after, 3000)])
            alarms = [t for t, value in enumerate(values) if evidence.update(value)]
            assert alarms and alarms[0] >= 3000, alarms[:3]
            delays[name].append(alarms[0] - 3000)
        evidence = RiseEvidence()
        values = _bernoulli(np.random.default_rng(seed), [(0.3, 3000), (0.1, 3000)])
        assert not any(evidence.update(value) for value in values)
    assert max(delays["strong"]) < 150, delays
    assert max(delays["mild"]) < 2000, delays


def test_evidence_bound_holds_at_the_null_boundary():
    """Scenario: close to the worst case the bound allows: margin 0, no lag, and a warm-up
    whose mean is exactly the stream's (100 ones in 1,000 values, then Bernoulli(0.1)), so
    only the baseline's three standard errors separate it from the stream's mean.
    Under the null R_t − t is a supermartingale, so E[R_t] <= t whatever the bets.
    We expect: the mean statistic over 400 seeds after 200 values is at most 200."""
    finals = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        evidence = RiseEvidence(margin=0.0, warmup=1000, lag=0, min_rise=1e-9)
        for value in [1.0] * 100 + [0.0] * 900:  # the baseline: mean exactly 0.1
            evidence.update(value)
        for value in (rng.random(200) < 0.1).astype(float).tolist():
            evidence.update(value)
        finals.append(evidence.statistic)
    assert np.mean(finals) <= 200.0


def test_evidence_state_round_trip_continues_bit_exactly():
    """Scenario: evidence fed 2,000 values, snapshotted, restored into a fresh one, then
    both fed the same 1,500 more (through a rise). We expect identical statistics and
    alarms, bit for bit."""
    values = _bernoulli(np.random.default_rng(3), [(0.1, 2500), (0.5, 1000)])
    uninterrupted, first = RiseEvidence(), RiseEvidence()
    for value in values[:2000]:
        uninterrupted.update(value)
        first.update(value)
    resumed = RiseEvidence()
    resumed.set_state(first.get_state())
    for value in values[2000:]:
        assert uninterrupted.update(value) == resumed.update(value)
        assert uninterrupted.statistic == resumed.statistic


def test_drift_memory_snapshot_from_before_the_evidence_test_loads():
    """Scenario: a DriftMemory snapshot as written before this change (no
    ``significance`` / ``evidence_margin`` in its config, no evidence in its state) is
    loaded by today's class. We expect: it loads, keeps its items and counts, and its
    evidence starts afresh (a drift after the load is still confirmed)."""
    memory = DriftMemory(capacity=16, n_classes=2)
    rng = np.random.default_rng(0)
    for error in _bernoulli(rng, [(0.1, 1500)]):
        memory.add(np.array([error]), int(error), 0.1)
        memory.update_loss(error)
    snapshot = memory.state_dict()
    old = {**snapshot, "config": {k: v for k, v in snapshot["config"].items()
                                  if k not in ("significance", "evidence_margin")},
           "state": {k: v for k, v in snapshot["state"].items()
                     if k not in ("evidence", "candidate", "unconfirmed_count")}}
    restored = DriftMemory(capacity=16, n_classes=2)
    restored.load_state_dict(old)
    assert len(restored) == len(memory) and restored.signals_seen == 1500
    assert restored.evidence == 0.0
    for error in _bernoulli(rng, [(0.1, 1000), (0.5, 1000)]):
        restored.update_loss(error)
    assert restored.drift_count >= 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"significance": 0.0}, "significance"), ({"significance": 1.5}, "significance"),
    ({"significance": math.nan}, "significance"), ({"evidence_margin": -0.1}, "evidence_margin"),
    ({"evidence_margin": -1.0, "significance": None}, "evidence_margin"),
    ({"evidence_margin": -1.0, "detector": None}, "evidence_margin"),
])
def test_evidence_settings_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        DriftMemory(capacity=8, n_classes=2, **kwargs)


def test_negative_nan_or_infinite_losses_are_refused():
    evidence = RiseEvidence()
    for value in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^loss:"):
            evidence.update(value)


def test_a_loss_a_hair_below_zero_is_fed_as_zero():
    """Scenario: ``-log p`` for a probability a rounding error above 1 is -2.2e-16 (seen
    on a stream whose ensemble output summed to 1 + 2^-52); a signed value can also come
    through ``update_loss``. We expect: no error (before the clamp, the evidence refused
    it after the detector had already moved), and the evidence treats it as 0."""
    memory = DriftMemory(capacity=8, n_classes=2)
    for value in [-2.220446049250313e-16, -1.0] * 300:
        memory.update_loss(value)
    assert memory.signals_seen == 600 and memory.drift_count == 0
    assert memory.evidence == 0.0


def _runs(rng, n, rate, rho):
    """0/1 errors at ``rate`` that repeat the previous one with probability ``rho`` (a
    stationary binary AR(1): lag-1 correlation rho, errors in runs)."""
    fresh = rng.random(n) < rate
    keep = rng.random(n) < rho
    for t in range(1, n):
        if keep[t]:
            fresh[t] = fresh[t - 1]
    return fresh.astype(float).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_at_most_one_drift_per_100k_dependent_stationary_values(detector):
    """Scenario (must-hold 3, dependent losses): stationary 0/1 errors in runs (binary
    AR(1), rate 0.1 and 0.3, lag-1 correlation 0.5, 0.8 and 0.95), 100,000 values each.
    Before the evidence measured the dependence the four streams drew 10, 92, 92 and 94
    drifts with ADWIN (10, 67, 39, 94 with Page-Hinkley).
    We expect: at most one drift per stream, and the evidence knows the losses depend
    on each other (variance inflation > 2)."""
    drifts = []
    for seed, (rate, rho) in enumerate([(0.1, 0.5), (0.1, 0.8), (0.3, 0.8), (0.1, 0.95)]):
        memory = DriftMemory(capacity=64, n_classes=2, detector=detector)
        for value in _runs(np.random.default_rng(20 + seed), 100_000, rate, rho):
            memory.update_loss(value)
        drifts.append(memory.drift_count)
        assert memory._evidence.inflation > 2.0
    assert max(drifts) <= 1, drifts


def test_evidence_still_finds_a_rise_in_dependent_losses():
    """Scenario: 0/1 errors in runs (lag-1 correlation 0.6) whose rate rises 0.1 -> 0.4
    after 10,000 values (five seeds). We expect: evidenced after the rise, within 1,000
    values, never before it."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        values = _runs(rng, 10_000, 0.1, 0.6) + _runs(rng, 3_000, 0.4, 0.6)
        evidence = RiseEvidence()
        alarms = [t for t, value in enumerate(values) if evidence.update(value)]
        assert alarms and 10_000 <= alarms[0] < 11_000, alarms[:3]


def test_drift_memory_snapshot_from_before_the_dependence_measure_loads():
    """Scenario: a DriftMemory snapshot whose evidence state predates the dependence
    measure (no ``dependence``), written after 3,000 errors in runs. We expect: it loads,
    the evidence measures the dependence afresh from there (v = 1 at first, > 1 later;
    until then it tests as before, so at most one drift in the meantime), and a later
    rise is still confirmed."""
    rng = np.random.default_rng(4)
    memory = DriftMemory(capacity=16, n_classes=2)
    for error in _runs(rng, 3_000, 0.1, 0.8):
        memory.update_loss(error)
    snapshot = memory.state_dict()
    assert "dependence" in snapshot["state"]["evidence"]
    evidence = {k: v for k, v in snapshot["state"]["evidence"].items() if k != "dependence"}
    old = {**snapshot, "state": {**snapshot["state"], "evidence": evidence}}
    restored = DriftMemory(capacity=16, n_classes=2)
    restored.load_state_dict(old)
    assert restored.signals_seen == 3_000 and restored._evidence.inflation == 1.0
    for error in _runs(rng, 5_000, 0.1, 0.8):
        restored.update_loss(error)
    drifts = restored.drift_count
    assert restored._evidence.inflation > 2.0 and drifts <= 1
    for error in _bernoulli(rng, [(0.6, 2_000)]):
        restored.update_loss(error)
    assert restored.drift_count > drifts
