"""The portfolio of candidate chains: its regret bound, its trace, its config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamweights.adapters import Chain, DriftMemory, Portfolio
from streamweights.adapters.base import build_adapter
from streamweights.config import ConfigError, StreamConfig, _build_stage

#: Three candidates whose fortunes differ by regime: a slow Bayes mixture of the models
#: (best while one model stays good, then stuck on it), the uniform average (best when
#: neither model is any good) and a fast Fixed-Share (pays for its sharing, but tracks).
CANDIDATES = [[{"type": "Hedge", "learning_rate": 1.0}],
              [{"type": "Hedge", "learning_rate": 1e-12}],
              [{"type": "FixedShare", "share": 0.05}]]


def switching_stream(seed: int, segment: int) -> tuple[list[np.ndarray], list[int]]:
    """Two deployed models: model 0 right (0.9 confident, 85% of the time) in the first
    segment while model 1 is a confident coin, neither model informative (confident and
    opposite) in the second, model 1 right in the third, model 0 again in the fourth."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for regime in (0, 1, 2, 0):
        for _ in range(segment):
            y = int(rng.integers(2))
            truth = np.eye(2)[y]
            good, bad = 0.9 * truth + 0.05, 0.9 * (1.0 - truth) + 0.05
            coin = 0.8 * np.eye(2)[int(rng.integers(2))] + 0.1
            if regime == 1:
                pair = [coin, 1.0 - coin]
            else:
                noisy = good if rng.random() < 0.85 else bad
                pair = [noisy, coin] if regime == 0 else [coin, noisy]
            xs.append(np.array(pair))
            ys.append(y)
    return xs, ys


def run(portfolio: Portfolio, xs: list[np.ndarray], ys: list[int],
        delay: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Served log-loss per label and each candidate's log-loss on what it served, with
    labels arriving ``delay`` events after their prediction."""
    chain = Chain([portfolio])
    pending, served_losses, candidate_losses = [], [], []
    for x, y in zip(xs, ys, strict=True):
        served, trace = chain.observe_predict_trace(x)
        pending.append((trace, y, served))
        if len(pending) > delay:
            trace, label, out = pending.pop(0)
            chain.learn_trace(trace, label)
            served_losses.append(-math.log(out[label]))
            rows = trace[-1][:len(portfolio.chains)]
            candidate_losses.append([-math.log(row[label]) for row in rows])
    return np.array(served_losses), np.array(candidate_losses)


def best_switching(losses: np.ndarray, switches: int) -> float:
    """Least cumulative loss of a sequence of candidates that switches at most
    ``switches`` times (dynamic programme over (switches used, current candidate))."""
    n = losses.shape[1]
    best = np.full((switches + 1, n), np.inf)
    best[0] = 0.0
    for row in losses:
        stay = best + row
        move = np.full_like(best, np.inf)
        move[1:] = best[:-1].min(axis=1, keepdims=True) + row
        best = np.minimum(stay, move)
    return float(best.min())


@pytest.mark.parametrize("delay", [0, 40])
def test_regret_within_the_stated_bound_when_the_best_chain_switches(delay):
    """Scenario: the best candidate changes with each of four regimes. We expect the
    portfolio's cumulative log-loss within ln N + ln T of the best candidate in
    hindsight and within ln N + ln T + S (ln N + ln T) of the best sequence of
    candidates with S = 3 switches, and the weight on the leader of the last regime."""
    xs, ys = switching_stream(seed=3, segment=1_500)
    portfolio = Portfolio(n_models=2, n_classes=2, candidates=CANDIDATES)
    served, candidates = run(portfolio, xs, ys, delay)
    count, labels = candidates.shape[1], len(served)
    bound = math.log(count) + math.log(labels)
    totals = candidates.sum(axis=0)
    mixture = served.sum()
    assert mixture - totals.min() <= bound
    assert portfolio.describe()["regret"] == pytest.approx(mixture - totals.min(), rel=1e-9)
    assert portfolio.regret_bound() == pytest.approx(bound)
    sequence = best_switching(candidates, 3)
    assert sequence < totals.min() - 20 * bound  # the switches matter on this stream
    assert mixture - sequence <= bound + 3 * bound
    # the best fixed candidate does not win every regime, and the mixture tracks
    by_regime = candidates.reshape(4, -1, count).sum(axis=1) if delay == 0 else None
    if by_regime is not None:
        assert len(set(by_regime.argmin(axis=1).tolist())) >= 2
    assert portfolio.weights_.argmax() == candidates[-500:].sum(axis=0).argmin()


def test_a_fixed_share_rate_would_break_the_bound_on_a_long_easy_stream():
    """Why alpha_t = 1/(t+1): with a constant share the portfolio pays ~alpha per label
    against the best candidate, which on an easy stream (small losses) exceeds
    ln N + ln T; the decreasing share stays inside."""
    rng = np.random.default_rng(5)
    xs, ys = [], []
    for _ in range(6_000):
        y = int(rng.integers(2))
        xs.append(np.array([0.98 * np.eye(2)[y] + 0.01, [0.5, 0.5]]))
        ys.append(y)
    portfolio = Portfolio(n_models=2, n_classes=2, candidates=CANDIDATES)
    served, candidates = run(portfolio, xs, ys)
    regret = served.sum() - candidates.sum(axis=0).min()
    assert regret <= math.log(3) + math.log(len(served))
    constant = 0.01 * len(served)  # what a constant alpha = 0.01 would pay
    assert regret < constant / 4


def test_candidates_learn_on_what_they_served():
    """Scenario: labels arrive 25 events late. We expect every candidate's state to equal
    that of the same chain driven alone, predicting at prediction time and learning from
    its own trace at label time (not from a trace re-computed when the label comes)."""
    xs, ys = switching_stream(seed=9, segment=200)
    specs = [[{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"}],
             [{"type": "OnlineStacking"}, {"type": "Calibeating", "base": "OnlinePlatt"}]]
    portfolio = Portfolio(n_models=2, n_classes=2, candidates=specs)
    run(portfolio, xs, ys, delay=25)
    for spec, inside in zip(specs, portfolio.chains, strict=True):
        alone = Chain([_build(stage) for stage in spec])
        pending = []
        for x, y in zip(xs, ys, strict=True):
            pending.append((alone.observe_predict_trace(x)[1], y))
            if len(pending) > 25:
                trace, label = pending.pop(0)
                alone.learn_trace(trace, label)
        assert _same(inside.state_dict(), alone.state_dict())
    # and learning on re-computed traces would have given other numbers
    recomputed = Portfolio(n_models=2, n_classes=2, candidates=specs)
    pending = []
    for x, y in zip(xs, ys, strict=True):
        recomputed.observe(x)
        pending.append((x, y))
        if len(pending) > 25:
            recomputed.learn(*pending.pop(0))
    assert not _same(recomputed.state_dict(), portfolio.state_dict())


def _build(stage: dict) -> object:
    options = {k: v for k, v in stage.items() if k != "type"}
    if isinstance(options.get("base"), str):
        options["base"] = {"adapter": options["base"], "config": {}}
    if stage["type"] in ("FixedShare", "OnlineStacking", "Hedge"):
        options.update(n_models=2, n_classes=2)
    return build_adapter({"adapter": stage["type"], "config": options})


def _same(left: object, right: object) -> bool:
    from streamweights.adapters.state_codec import dumps_state

    return dumps_state(left) == dumps_state(right)


def test_bad_trace_or_label_changes_nothing():
    portfolio = Portfolio(n_models=2, n_classes=2)
    chain = Chain([portfolio, DriftMemory(n_classes=2, capacity=8)])
    x = np.array([[0.7, 0.3], [0.4, 0.6]])
    _, trace = chain.observe_predict_trace(x)
    before = portfolio.state_dict()
    with pytest.raises(ValueError, match="expected 3"):
        chain.learn_trace(trace[:2], 1)
    with pytest.raises(ValueError, match="shape"):
        portfolio.learn_traced(x, trace[-1][:-1], 1)
    with pytest.raises(ValueError, match="unknown class"):
        chain.learn_trace(trace, 2)
    assert _same(portfolio.state_dict(), before)


def test_config_builds_the_default_and_refuses_what_cannot_work():
    stream = StreamConfig(name="s", task="classification", n_classes=2, models=("a", "b"),
                          adapters=())
    built = _build_stage({"type": "Portfolio"}, stream, "streams[s].adapters[0]")
    assert built.names == ["FixedShare->OnlinePlatt", "FixedShare->Calibeating",
                           "OnlineStacking->OnlinePlatt", "FixedShare->OnlineBetaScaling"]
    regression = StreamConfig(name="r", task="regression", n_classes=None, models=("a",),
                              adapters=())
    built = _build_stage({"type": "Portfolio"}, regression, "streams[r].adapters[0]")
    assert built.names == ["FixedShare", "Hedge", "OnlineStacking"]
    with pytest.raises(ConfigError, match=r"candidates\[0\]\[1\].type: unknown adapter"):
        _build_stage({"type": "Portfolio", "candidates": [[{"type": "FixedShare"},
                                                           {"type": "Nope"}]]},
                     stream, "streams[s].adapters[0]")
    with pytest.raises(ConfigError, match="n_models: set by the portfolio"):
        _build_stage({"type": "Portfolio", "candidates": [[{"type": "Hedge", "n_models": 2}]]},
                     stream, "streams[s].adapters[0]")


def test_regression_mixture_stays_within_adahedge_bound():
    """Scenario: regression, three deployed models; the accurate one changes halfway.
    We expect the served (mean) prediction's cumulative squared error within AdaHedge's
    bound (de Rooij et al. 2014, Theorem 8, losses scaled to [0, S]) of the best
    candidate, the account in ``describe`` equal to it, and no bound claimed."""
    rng = np.random.default_rng(11)
    portfolio = Portfolio(n_models=3, n_classes=None)
    chain = Chain([portfolio])
    served_losses, candidate_losses = [], []
    for t in range(3_000):
        target = float(rng.normal())
        noise = rng.normal(scale=[0.2, 1.0, 2.0] if t < 1_500 else [2.0, 1.0, 0.2])
        out, trace = chain.observe_predict_trace(target + noise)
        chain.learn_trace(trace, target)
        served_losses.append((float(out) - target) ** 2)
        candidate_losses.append([(row[0] - target) ** 2 for row in trace[-1][:3]])
    losses = np.array(candidate_losses)
    best, count, labels = losses.sum(axis=0).min(), 3, len(served_losses)
    scale = losses.max()
    star = best / scale
    bound = scale * (2 * math.sqrt(star * (labels - star) / labels * math.log(count))
                     + 16 / 3 * math.log(count) + 2)
    regret = sum(served_losses) - best
    assert regret <= bound
    assert portfolio.describe()["regret"] == pytest.approx(regret, rel=1e-9, abs=1e-9)
    assert portfolio.regret_bound() is None
    assert portfolio.weights_[losses[-300:].sum(axis=0).argmax()] < 0.01  # off the worst
