"""Chain: late labels train every stage on what it saw at prediction time."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streamweights.adapters import (
    Calibeating,
    Chain,
    DriftMemory,
    FixedShare,
    Hedge,
    OnlinePlatt,
    OnlineTemperature,
    PriorShift,
    dumps_state,
    encode_state,
)


def _outputs(rng, n):
    p1 = rng.uniform(0.05, 0.95, size=(n, 3))
    return np.stack([1 - p1, p1], axis=2)


def test_late_label_trains_stages_on_served_inputs():
    """Scenario: predictions for events 0..99 are served, then their labels arrive while
    the ensemble has moved on. We expect: the calibrator learns on the ensemble output
    it was served (the trace), which differs from a re-computed one."""
    rng = np.random.default_rng(0)
    xs = _outputs(rng, 300)
    ys = rng.integers(0, 2, size=300)
    traced = Chain([FixedShare(n_models=3, n_classes=2), OnlinePlatt()])
    reference_ensemble = FixedShare(n_models=3, n_classes=2)
    reference_platt = OnlinePlatt()
    served = [traced.predict_trace(x) for x in xs[:100]]
    served_ensemble_outputs = [reference_ensemble.predict(x) for x in xs[:100]]
    for x, y in zip(xs[100:], ys[100:], strict=True):  # other labels move the chain on
        traced.learn(x, y)
        reference_platt.learn(reference_ensemble.predict(x), y)
        reference_ensemble.learn(x, y)
    for (_, trace), x, y, seen in zip(served, xs[:100], ys[:100], served_ensemble_outputs,
                                      strict=True):
        assert np.array_equal(trace[1], seen)
        traced.learn_trace(trace, y)
        reference_platt.learn(seen, y)
        reference_ensemble.learn(x, y)
    assert dumps_state(traced.stages[0].state_dict()) == dumps_state(
        reference_ensemble.state_dict())
    assert dumps_state(traced.stages[1].state_dict()) == dumps_state(
        reference_platt.state_dict())


def test_observe_predict_trace_equals_observe_then_predict():
    rng = np.random.default_rng(1)
    make = lambda: Chain([Hedge(n_models=3, n_classes=2), PriorShift(n_classes=2),  # noqa: E731
                          DriftMemory(capacity=8, n_classes=2)])
    one_pass, two_pass = make(), make()
    for x in _outputs(rng, 50):
        out_a, trace_a = one_pass.observe_predict_trace(x)
        two_pass.observe(x)
        out_b, trace_b = two_pass.predict_trace(x)
        assert out_a.tobytes() == out_b.tobytes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(trace_a, trace_b, strict=True))
    assert dumps_state(one_pass.state_dict()) == dumps_state(two_pass.state_dict())


def test_chain_rejects_inconsistent_stages():
    with pytest.raises(ValueError, match="classes"):
        Chain([FixedShare(n_models=3, n_classes=2), OnlineTemperature(n_classes=3)])
    with pytest.raises(ValueError, match="at least one"):
        Chain([])
    with pytest.raises(ValueError, match=r"stages\[0\]"):
        Chain([{"adapter": "NoSuchAdapter", "config": {}}])


def test_trace_length_is_checked():
    chain = Chain([FixedShare(n_models=3, n_classes=2), OnlinePlatt()])
    _, trace = chain.predict_trace(_outputs(np.random.default_rng(2), 1)[0])
    with pytest.raises(ValueError, match="trace"):
        chain.learn_trace(trace[:1], 1)


def _chain() -> Chain:
    return Chain([FixedShare(3, 2, share=0.01), Calibeating(OnlinePlatt(), n_bins=5)])


def test_a_chain_snapshot_is_checked_against_the_chain_config_once():
    """A chain compares its snapshot's config (every stage's whole spec, a calibeating's
    base included) with its own; its parts then load without comparing their copies
    again, but still check what adapter and format they are."""
    source = _chain()
    source.learn(np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]), 1)
    snapshot = source.state_dict()
    # the calibeating's base's own copy of its config is not read again ...
    loose = copy.deepcopy(snapshot)
    loose["state"]["stages"][1]["state"]["base"]["config"] = {"stale": True}
    target = _chain()
    target.load_state_dict(loose)
    assert encode_state(target.state_dict()) == encode_state(snapshot)
    # ... the chain's config is (its stages' specs read from the stages' snapshots, see
    # Chain.upgrade_snapshot): another stage option, or another base, is refused
    for path, value in ((("state", "stages", 0, "config", "share"), 0.5),
                        (("state", "stages", 1, "config", "base", "config", "lr"), 0.5)):
        other = copy.deepcopy(snapshot)
        place = other
        for key in path[:-1]:
            place = place[key]
        place[path[-1]] = value
        with pytest.raises(ValueError, match=r"Chain\.load_state_dict: snapshot was taken "
                                             r"with another configuration"):
            _chain().load_state_dict(other)
    # and a part written by another adapter, or in another format, is refused
    for field, value, message in (("adapter", "Hedge", "snapshot is of adapter 'Hedge'"),
                                  ("version", 99, "snapshot format version 99")):
        other = copy.deepcopy(snapshot)
        other["state"]["stages"][1]["state"]["base"][field] = value
        with pytest.raises(ValueError, match=message):
            _chain().load_state_dict(other)


def test_a_portfolio_checks_its_chains_stage_configs_though_upgraded_once():
    """A portfolio's chains and their stages are upgraded once, by the portfolio's
    ``upgrade_snapshot`` (not again as each part loads); the stages' configs are still
    compared, through the chain configs that upgrade rebuilds from the stages' snapshots:
    another option in a stage's own snapshot is refused."""
    from streamweights.adapters import Portfolio

    def portfolio() -> Portfolio:
        return Portfolio(n_models=3, n_classes=2, candidates=[
            [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"}],
            [{"type": "Hedge"}]])

    source = portfolio()
    outputs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    source.observe(outputs)
    source.learn(outputs, 1)
    snapshot = source.state_dict()
    target = portfolio()
    target.load_state_dict(snapshot)
    assert encode_state(target.state_dict()) == encode_state(snapshot)
    other = copy.deepcopy(snapshot)
    other["state"]["candidates"][0]["state"]["stages"][0]["config"]["share"] = 0.5
    with pytest.raises(ValueError, match=r"Chain\.load_state_dict: snapshot was taken "
                                         r"with another configuration"):
        portfolio().load_state_dict(other)
