"""The portfolio in the native core (candidates and mixture, one call per verb) against
the Python loop it replaced (``tests/reference/portfolio.py``), over long drifting streams.

Both sides run the same stage adapters (the production handles), so nothing but the
driving differs: the core calls each stage's quick path on a slice where the loop called
its Python verb, and does the mixture's arithmetic in ``f64`` in the order the loop did
it in Python floats (``**`` through the C library's ``pow``, as Python's). So the
served outputs, the traces and the snapshots must be equal bit for bit, not merely close.
"""

from __future__ import annotations

import copy
import heapq
import pickle

import numpy as np
import pytest

from streamweights.adapters import Hedge, Portfolio
from streamweights.adapters.base import _REGISTRY
from streamweights.adapters.state_codec import dumps_state
from tests.adapters.test_native_ensemble import drifting_stream
from tests.reference.portfolio import Portfolio as ReferencePortfolio

N_EVENTS = 100_000

#: (name, Portfolio kwargs); the stream's shape follows n_models / n_classes.
CONFIGS = [
    ("binary-defaults", {"n_models": 3, "n_classes": 2}),
    ("three-classes-defaults", {"n_models": 4, "n_classes": 3}),
    ("regression-defaults", {"n_models": 3, "n_classes": None}),
    ("binary-hedging-beta-drift-share", {
        "n_models": 2, "n_classes": 2, "drift_share": 0.3, "probability_floor": 1e-3,
        "candidates": [
            [{"type": "Hedge", "loss": "squared"},
             {"type": "Calibeating", "base": "OnlineBetaScaling", "mode": "hedging",
              "seed": 3}],
            [{"type": "FixedShare", "share": 0.05}, {"type": "OnlineTemperature"}],
            [{"type": "OnlineStacking", "fit_intercept": False}, {"type": "OnlinePlatt"}],
        ]}),
]


def _stream(kwargs: dict, n: int, seed: int) -> tuple[np.ndarray, list]:
    shape = {"n_models": kwargs["n_models"]}
    if kwargs["n_classes"] is not None:
        shape["n_classes"] = kwargs["n_classes"]
    return drifting_stream(shape, n, seed)


def _replay(portfolios: list, outputs: np.ndarray, labels: list, seed: int,
            check_every: int = 1, features: np.ndarray | None = None) -> None:
    """Serve every event on each portfolio (with its row of ``features`` when given) and
    learn its label 0..60 events later (late and out of order, from the trace kept at
    prediction time), with a drift alarm every ~7,000 events; outputs and traces compared
    bit for bit as they are served."""
    rng = np.random.default_rng(seed)
    delays = rng.integers(0, 60, size=len(labels))
    pending: list = []
    for t, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        given = {} if features is None else {"features": features[t]}
        served = [portfolio.observe_predict_traced(x, **given) for portfolio in portfolios]
        if t % check_every == 0:
            first_out, first_trace = served[0]
            for out, trace in served[1:]:
                assert out.shape == first_out.shape and trace.shape == first_trace.shape
                assert np.array_equal(out, first_out), f"event {t}: served differ"
                assert np.array_equal(trace, first_trace), f"event {t}: traces differ"
        heapq.heappush(pending, (t + int(delays[t]), t, x, [trace for _, trace in served],
                                 y))
        while pending and pending[0][0] <= t:
            _, _, x_seen, traces, label = heapq.heappop(pending)
            for portfolio, trace in zip(portfolios, traces, strict=True):
                portfolio.learn_traced(x_seen, trace, label)
        if t % 7_001 == 7_000:
            for portfolio in portfolios:
                portfolio.on_drift()


def _same_state(left, right) -> None:
    assert dumps_state(left.state_dict()) == dumps_state(right.state_dict())


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[name for name, _ in CONFIGS])
def test_native_portfolio_equals_the_python_loop_bit_for_bit(name, kwargs):
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    assert ours.native, "every default stage has a native core"
    outputs, labels = _stream(kwargs, N_EVENTS, seed=11)
    _replay([ours, oracle], outputs, labels, seed=5)
    _same_state(ours, oracle)
    assert ours.describe() == oracle.describe()
    assert ours.candidate_weights() == oracle.candidate_weights()


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS[:3], ids=[name for name, _ in CONFIGS[:3]])
def test_snapshots_move_between_the_two_and_continue_alike(name, kwargs):
    outputs, labels = _stream(kwargs, 6_000, seed=2)
    oracle = ReferencePortfolio(**kwargs)
    _replay([oracle], outputs[:3_000], labels[:3_000], seed=1)
    ours = Portfolio(**kwargs)
    ours.load_state_dict(oracle.state_dict())  # an old (Python-loop) snapshot loads
    _same_state(ours, oracle)
    _replay([ours, oracle], outputs[3_000:], labels[3_000:], seed=2)
    back = ReferencePortfolio(**kwargs)
    back.load_state_dict(ours.state_dict())
    _same_state(back, ours)


@pytest.mark.parametrize("candidates", [
    None,  # the default portfolio: calibrators and the Kalman filter among its stages
    [[{"type": "Hedge"}], [{"type": "FixedShare", "share": 0.05}]]])
def test_pickle_and_deepcopy_rebind_the_core_to_the_copied_stages(candidates):
    kwargs = {"n_models": 3, "n_classes": 2}
    if candidates is not None:
        kwargs["candidates"] = candidates
    outputs, labels = _stream(kwargs, 4_000, seed=4)
    ours = Portfolio(**kwargs)
    _replay([ours], outputs[:2_000], labels[:2_000], seed=3)
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert twin.native
        _same_state(twin, ours)
    twin = copy.deepcopy(ours)
    _replay([ours, twin], outputs[2_000:], labels[2_000:], seed=6)
    _same_state(twin, ours)
    assert ours.state_dict()["state"]["n_learned"] > 0


def test_a_trace_row_the_quick_check_refuses_goes_through_the_handle_to_the_same_bits():
    """A later stage's input accepted by Python's check but just outside the quick one
    (the sum 1e-12 from the tolerance's edge): the core hands it to the stage's Python
    verb, which renormalises it the same way; the two sides stay equal."""
    kwargs = {"n_models": 3, "n_classes": 2}
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    outputs, labels = _stream(kwargs, 200, seed=8)
    _replay([ours, oracle], outputs[:100], labels[:100], seed=4)
    _, trace = ours.observe_predict_traced(outputs[100])
    oracle.observe_predict_traced(outputs[100])
    edge = trace.copy()
    later = len(ours.chains) + 1  # first later row: the OnlinePlatt input of candidate 0
    edge[later] = [0.5, 0.5 + 1e-3 - 5e-13]
    ours.learn_traced(outputs[100], edge, labels[100])
    oracle.learn_traced(outputs[100], edge, labels[100])
    _same_state(ours, oracle)
    _replay([ours, oracle], outputs[101:], labels[101:], seed=9)
    _same_state(ours, oracle)


def test_candidates_with_observing_stages_run_natively_with_the_same_bits():
    """DriftMemory and PriorShift observe every served input: the core has them observe
    in ``observe_predict_traced`` and not in the pure ``predict_traced``, as the loop."""
    kwargs = {"n_models": 2, "n_classes": 3, "drift_share": 0.5, "candidates": [
        [{"type": "FixedShare", "share": 0.05}, {"type": "OnlineTemperature"},
         {"type": "DriftMemory", "capacity": 8}],
        [{"type": "Hedge"}, {"type": "PriorShift"}], [{"type": "OnlineStacking"}]]}
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    assert ours.native
    outputs, labels = _stream(kwargs, 20_000, seed=12)
    for start in range(0, 20_000, 2_000):
        _replay([ours, oracle], outputs[start:start + 1_990], labels[start:start + 1_990],
                seed=start)
        for x in outputs[start + 1_990:start + 2_000]:  # pure: nothing observed
            served = [p.predict_traced(x) for p in (ours, oracle)]
            assert np.array_equal(served[0][0], served[1][0])
            assert np.array_equal(served[0][1], served[1][1])
    _same_state(ours, oracle)


class _OwnHedge(Hedge):
    """A user's subclass: it may override a verb, so the core does not drive it (a
    leading underscore keeps it out of the registry but while a test puts it there)."""


def test_a_candidate_without_a_native_core_keeps_the_python_loop_with_the_same_bits(
        monkeypatch):
    monkeypatch.setitem(_REGISTRY, "_OwnHedge", _OwnHedge)
    kwargs = {"n_models": 2, "n_classes": 3, "drift_share": 0.5, "candidates": [
        [{"type": "FixedShare", "share": 0.05}, {"type": "OnlineTemperature"}],
        [{"type": "_OwnHedge"}], [{"type": "OnlineStacking"}]]}
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    assert not ours.native
    outputs, labels = _stream(kwargs, 5_000, seed=12)
    _replay([ours, oracle], outputs, labels, seed=13)
    _same_state(ours, oracle)


def test_twin_fixed_share_candidates_learn_apart_once_their_states_differ():
    """Candidates whose first FixedShare is in the same state learn a label once in the
    core (the other takes the state reached); once one is set apart (a snapshot loaded
    into it), each learns on its own again, as the Python loop does."""
    twin = [{"type": "FixedShare"}, {"type": "OnlinePlatt"}]
    kwargs = {"n_models": 3, "n_classes": 2, "candidates": [
        twin, [{"type": "FixedShare"}, {"type": "OnlineBetaScaling"}], twin,
        [{"type": "OnlineStacking"}, {"type": "OnlinePlatt"}]]}
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    assert ours.native
    outputs, labels = _stream(kwargs, 6_000, seed=21)
    _replay([ours, oracle], outputs[:1_000], labels[:1_000], seed=3)
    earlier = ours.chains[0].stages[0].state_dict()
    _replay([ours, oracle], outputs[1_000:3_000], labels[1_000:3_000], seed=4)
    for portfolio in (ours, oracle):
        portfolio.chains[2].stages[0].load_state_dict(earlier)
    _replay([ours, oracle], outputs[3_000:], labels[3_000:], seed=5)
    _same_state(ours, oracle)
    first, second, third = (dumps_state(ours.chains[i].stages[0].state_dict())
                            for i in range(3))
    assert first == second, "twins stay twins"
    assert first != third, "the one set apart learned on its own"


def test_a_refused_label_changes_nothing_on_the_native_path():
    ours = Portfolio(n_models=3, n_classes=2)
    outputs, labels = _stream({"n_models": 3, "n_classes": 2}, 300, seed=1)
    _replay([ours], outputs, labels, seed=2)
    before = dumps_state(ours.state_dict())
    _, trace = ours.predict_traced(outputs[0])
    for label in (2, -1, 0.5, "1"):
        with pytest.raises(ValueError, match="y"):
            ours.learn_traced(outputs[0], trace, label)
    with pytest.raises(ValueError, match="trace"):
        ours.learn_traced(outputs[0], trace[:-1], 1)
    assert dumps_state(ours.state_dict()) == before


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS[:3], ids=[name for name, _ in CONFIGS[:3]])
def test_outputs_the_core_does_not_clear_take_pythons_check_to_the_same_bits(name, kwargs):
    """Nested lists, a Fortran-ordered array, rows summing to 1 - 0.9e-3 (inside the
    tolerance, outside the quick margin): Python checks them, the core runs the rest."""
    ours, oracle = Portfolio(**kwargs), ReferencePortfolio(**kwargs)
    outputs, labels = _stream(kwargs, 3_000, seed=21)
    forms = [lambda x: x.tolist(), np.asfortranarray,
             lambda x: x * (1.0 - 0.9e-3) if kwargs["n_classes"] else x.tolist()]
    for t, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        x = forms[t % 3](x)
        served = [p.observe_predict_traced(x) for p in (ours, oracle)]
        assert np.array_equal(served[0][0], served[1][0])
        assert np.array_equal(served[0][1], served[1][1])
        for p, (_, trace) in zip((ours, oracle), served, strict=True):
            p.learn_traced(x, trace.tolist() if t % 2 else trace, y)
    _same_state(ours, oracle)


def test_the_regression_step_squares_through_pow_as_pythons_float_power_does():
    """``(v - y) ** 2`` is the C library's ``pow``, which differs from ``d * d`` in the
    last bit for about one value in a thousand; summed into long-run totals the bit is
    mostly absorbed, so the long streams above would not notice a multiplication: this
    pins it on values where the two differ."""
    rng = np.random.default_rng(0)
    values = []
    while len(values) < 20:
        d = float(rng.normal() * 10.0 ** rng.integers(-5, 6))
        if d ** 2 != d * d:
            values.append(d)
    ours = Portfolio(n_models=3, n_classes=None)
    oracle = ReferencePortfolio(n_models=3, n_classes=None)
    for first, second in zip(values[::2], values[1::2], strict=True):
        ours._core.update_regression([first, second, 0.0], second, 0.0)
        oracle._update_regression([first, second, 0.0], second, 0.0)
        _same_state(ours, oracle)
