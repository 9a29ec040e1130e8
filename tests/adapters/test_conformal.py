"""Online conformal layers: ACI's finite-sample bound on adversarial sequences, long-run
coverage on exchangeable and drifting data, what is kept with a pending prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters.conformal import AdaptiveConformal, ConformalPID, DtACI
from streamweights.adapters.conformal.scores import (
    ScoreWindow,
    covered_level,
    empirical_quantile,
)


def _adversary(kind: str, rng: np.random.Generator):
    """Label choices against a regression layer predicting 0: ``miss`` puts the label
    just outside every finite interval, ``cover`` inside whenever possible, ``mixed``
    switches between the two in random blocks, ``random`` is noise of a drifting scale."""
    state = {"mode": "miss", "left": 0, "t": 0}

    def choose(q: float) -> float:
        state["t"] += 1
        mode = kind
        if kind == "mixed":
            if state["left"] == 0:
                state["mode"] = "miss" if state["mode"] == "cover" else "cover"
                state["left"] = int(rng.integers(1, 200))
            state["left"] -= 1
            mode = state["mode"]
        if mode == "miss":
            return 0.0 if math.isinf(q) and q > 0 else max(q, 0.0) + 1.0
        if mode == "cover":
            return 0.0
        return float(rng.normal(scale=1.0 + state["t"] / 500.0))

    return choose


@pytest.mark.parametrize("kind", ["miss", "cover", "mixed", "random"])
@pytest.mark.parametrize("step", [0.005, 0.05, 0.3])
@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.5])
def test_aci_finite_sample_bound_holds_on_adversarial_sequences(kind, step, alpha):
    """Gibbs & Candès (2021), Prop. 4.1: for every T,
    |(1/T) sum err_t - alpha| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma T)."""
    rng = np.random.default_rng(17)
    layer = AdaptiveConformal(alphas=[alpha], step=step, window=50)
    choose = _adversary(kind, rng)
    misses = 0
    bound_numerator = max(alpha, 1.0 - alpha) + step
    for t in range(1, 2_001):
        q = layer.thresholds_[0]
        y = choose(q)
        misses += abs(y) > q
        layer.learn(0.0, y)
        gap = abs(misses / t - alpha)
        bound = bound_numerator / (step * t)
        assert gap <= bound + 1e-12, (t, gap, bound)


def test_quantile_helpers_follow_the_conformal_rank():
    ordered = [0.1, 0.2, 0.3, 0.4]
    assert empirical_quantile(ordered, 0.5) == 0.3  # ceil(0.5 * 5) = 3rd smallest
    assert empirical_quantile(ordered, 0.9) == math.inf  # ceil(4.5) = 5 > 4
    assert empirical_quantile(ordered, 0.0) == -math.inf
    assert empirical_quantile([], 0.5) == math.inf
    # beta is the largest level still covering the value
    beta = covered_level(ordered, 0.25)
    assert empirical_quantile(ordered, 1 - beta + 1e-12) >= 0.25
    assert empirical_quantile(ordered, 1 - beta - 0.01) < 0.25


def test_score_window_keeps_the_last_scores_sorted():
    window = ScoreWindow(3)
    for value in [5.0, 1.0, 3.0, 2.0, 4.0]:
        window.push(value)
    assert window.ring == [2.0, 4.0, 3.0] and window.ordered == [2.0, 3.0, 4.0]
    restored = ScoreWindow(3)
    restored.load(window.state())
    assert restored.ordered == window.ordered and restored.head == window.head


@pytest.mark.parametrize("factory", [
    lambda: AdaptiveConformal(alphas=[0.1, 0.05], n_classes=3, step=0.01),
    lambda: ConformalPID(alphas=[0.1, 0.05], n_classes=3),
    lambda: DtACI(alphas=[0.1, 0.05], n_classes=3),
], ids=["aci", "pid", "dtaci"])
def test_long_run_coverage_on_a_drifting_classification_stream_with_delays(factory):
    """Scenario: a 3-class model whose probabilities are sharp and right for 4,000
    events, then confidently wrong half the time; labels arrive 100 events late. We
    expect: long-run coverage within a point of 1 - alpha at both levels."""
    rng = np.random.default_rng(3)
    layer = factory()
    pending = []
    covered = np.zeros(2)
    labels = 0
    for t in range(12_000):
        logits = rng.normal(scale=3.0, size=3)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        y = int(rng.choice(3, p=p)) if t < 4_000 or rng.random() < 0.5 else \
            int(rng.integers(3))
        output, served = layer.serve(p)
        pending.append((p, served, y, output))
        if len(pending) > 100:
            q, kept, label, shown = pending.pop(0)
            covered += shown[:, label]
            labels += 1
            layer.learn_served(q, kept, label)
    coverage = covered / labels
    assert abs(coverage[0] - 0.9) <= 0.01 and abs(coverage[1] - 0.95) <= 0.01, coverage


def test_dtaci_weights_move_to_the_step_that_fits():
    """After an abrupt change the large steps react; on a long stationary stretch the
    mixture leans on the small ones."""
    rng = np.random.default_rng(5)
    layer = DtACI(alphas=[0.1])
    for _ in range(6_000):
        layer.learn(0.0, float(rng.normal()))
    stationary = np.array(layer.weights_[0])
    small, large = stationary[:4].sum(), stationary[4:].sum()
    assert small > large
    assert math.isclose(math.fsum(stationary), 1.0, rel_tol=1e-12)
