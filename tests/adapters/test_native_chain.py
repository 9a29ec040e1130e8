"""The chain in the native core (every stage in one call per verb) against the Python
loop it replaced (``tests/reference/chain.py``), over long drifting streams.

Both sides hold the same kinds of stage adapters (the production handles; the oracle's
portfolio is the reference one, a Python loop over reference chains), so only the
driving differs, and the served outputs, the traces and the snapshots must be equal bit
for bit: the core calls each stage's own quick path on slices, in the loop's order.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from streamweights.adapters import (
    Calibeating,
    Chain,
    DriftMemory,
    FeatureCorrection,
    FixedShare,
    Hedge,
    OnlinePlatt,
    OnlineStacking,
    OnlineTemperature,
    Portfolio,
    PriorShift,
)
from streamweights.adapters.base import _REGISTRY
from streamweights.adapters.state_codec import dumps_state, loads_state
from tests.adapters.test_native_ensemble import drifting_stream
from tests.reference.chain import Chain as ReferenceChain
from tests.reference.portfolio import Portfolio as ReferencePortfolio

N_EVENTS = 100_000


def _default_binary(portfolio):
    return [portfolio(n_models=3, n_classes=2), DriftMemory(64, 2, "adwin")]


def _default_three(portfolio):
    return [portfolio(n_models=4, n_classes=3),
            DriftMemory(32, 3, "page_hinkley", signal="entropy")]


def _regression(portfolio):
    return [portfolio(n_models=3, n_classes=None)]


def _plain_binary(_):
    return [FixedShare(n_models=3, n_classes=2, share=0.02),
            Calibeating(OnlinePlatt(), mode="hedging", seed=4),
            PriorShift(n_classes=2, label_weight=0.5), DriftMemory(16, 2)]


def _plain_three(_):
    return [Hedge(n_models=4, n_classes=3), OnlineTemperature(n_classes=3),
            PriorShift(n_classes=3), DriftMemory(24, 3, None)]


def _plain_regression(_):
    return [OnlineStacking(n_models=3, n_classes=None)]


#: (name, builder given the Portfolio class, (n_models, n_classes) of the stream).
CHAINS = [
    ("service-default-binary", _default_binary, (3, 2)),
    ("portfolio-three-classes", _default_three, (4, 3)),
    ("portfolio-regression", _regression, (3, None)),
    ("plain-binary-hedging", _plain_binary, (3, 2)),
    ("plain-three-classes", _plain_three, (4, 3)),
    ("plain-regression", _plain_regression, (3, None)),
]


def _pair(build):
    ours = Chain(build(Portfolio))
    oracle = ReferenceChain(build(ReferencePortfolio))
    return ours, oracle


def _stream(shape, n, seed):
    n_models, n_classes = shape
    kwargs = {"n_models": n_models} if n_classes is None else {"n_models": n_models,
                                                               "n_classes": n_classes}
    return drifting_stream(kwargs, n, seed)


def _replay(chains, outputs, labels, seed, snapshot_traces=False, features=None):
    """Serve every event on each chain, learn its label 0..60 events later from the kept
    trace (late, out of order; as the pipeline's join restores it after a restart when
    ``snapshot_traces``), a drift alarm every ~7,000 events; served outputs and traces
    compared bit for bit as they come."""
    rng = np.random.default_rng(seed)
    delays = rng.integers(0, 60, size=len(labels))
    pending = []
    for t, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        extra = None if features is None else features[t]
        served = [chain.observe_predict_trace(x, extra) for chain in chains]
        first_out, first_trace = served[0]
        for out, trace in served[1:]:
            assert out.shape == first_out.shape and np.array_equal(out, first_out), t
            assert len(trace) == len(first_trace), t
            for ours, theirs in zip(trace, first_trace, strict=True):
                assert ours.shape == theirs.shape and np.array_equal(ours, theirs), t
        traces = [trace for _, trace in served]
        if snapshot_traces and t % 2:
            traces = [tuple(np.asarray(item) for item in loads_state(dumps_state(list(trace))))
                      for trace in traces]
        heapq.heappush(pending, (t + int(delays[t]), t, traces, y))
        while pending and pending[0][0] <= t:
            _, _, kept, label = heapq.heappop(pending)
            for chain, trace in zip(chains, kept, strict=True):
                chain.learn_trace(trace, label)
        if t % 7_001 == 7_000:
            for chain in chains:
                chain.on_drift()


def _same_state(left, right):
    assert dumps_state(left.state_dict()) == dumps_state(right.state_dict())


@pytest.mark.parametrize(("name", "build", "shape"), CHAINS, ids=[c[0] for c in CHAINS])
def test_native_chain_equals_the_python_loop_bit_for_bit(name, build, shape):
    ours, oracle = _pair(build)
    assert ours.native
    n = N_EVENTS if name.startswith(("service", "portfolio")) else N_EVENTS // 4
    outputs, labels = _stream(shape, n, seed=31)
    _replay([ours, oracle], outputs, labels, seed=7)
    _same_state(ours, oracle)


@pytest.mark.parametrize(("name", "build", "shape"), CHAINS[:2], ids=[c[0] for c in CHAINS[:2]])
def test_traces_from_a_snapshot_and_a_restored_chain_continue_alike(name, build, shape):
    """Traces that went through the snapshot codec (read-only arrays), and a chain
    restored from the oracle's snapshot half way, give the same bits."""
    ours, oracle = _pair(build)
    outputs, labels = _stream(shape, 8_000, seed=3)
    _replay([ours, oracle], outputs[:4_000], labels[:4_000], seed=1, snapshot_traces=True)
    restored = Chain(build(Portfolio))
    restored.load_state_dict(oracle.state_dict())
    _replay([restored, ours, oracle], outputs[4_000:], labels[4_000:], seed=2)
    _same_state(restored, oracle)


def test_inputs_the_core_does_not_clear_run_the_python_loop_to_the_same_bits():
    ours, oracle = _pair(_default_binary)
    outputs, labels = _stream((3, 2), 2_000, seed=5)
    for t, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        x = x.tolist() if t % 3 == 0 else np.asfortranarray(x) if t % 3 == 1 else x
        (out, trace), (their_out, their_trace) = (c.observe_predict_trace(x)
                                                  for c in (ours, oracle))
        assert np.array_equal(out, their_out)
        for chain, kept in ((ours, trace), (oracle, their_trace)):
            chain.learn_trace([item.tolist() for item in kept] if t % 2 else kept,
                              np.int64(y) if t % 5 == 0 else y)
    _same_state(ours, oracle)


class _OwnPlatt(OnlinePlatt):
    """A user's subclass: it may override a verb, so the core does not drive it (a
    leading underscore keeps it out of the registry but while a test puts it there)."""


def test_a_chain_with_a_stage_without_a_native_core_keeps_the_loop():
    stages = [FixedShare(n_models=3, n_classes=2), _OwnPlatt()]
    chain = Chain(stages)
    assert not chain.native
    _REGISTRY["_OwnPlatt"] = _OwnPlatt
    try:
        candidates = [[{"type": "FixedShare"}, {"type": "_OwnPlatt"}], [{"type": "Hedge"}]]
        ours = Chain([Portfolio(n_models=3, n_classes=2, candidates=candidates),
                      DriftMemory(8, 2)])
        oracle = ReferenceChain([ReferencePortfolio(n_models=3, n_classes=2,
                                                    candidates=candidates), DriftMemory(8, 2)])
    finally:
        _REGISTRY.pop("_OwnPlatt")
    assert not ours.native  # the portfolio's candidates run in Python: so does the chain
    outputs, labels = _stream((3, 2), 3_000, seed=9)
    _replay([ours, oracle], outputs, labels, seed=4)
    _same_state(ours, oracle)


def test_refused_records_change_nothing_on_the_native_path():
    chain = Chain(_default_binary(Portfolio))
    outputs, labels = _stream((3, 2), 500, seed=2)
    _replay([chain], outputs, labels, seed=3)
    before = dumps_state(chain.state_dict())
    bad = outputs[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        chain.observe_predict_trace(bad)
    assert dumps_state(chain.state_dict()) == before
    _, trace = chain.observe_predict_trace(outputs[1])
    before = dumps_state(chain.state_dict())
    for label in (2, -1, 0.5):
        with pytest.raises(ValueError, match="y"):
            chain.learn_trace(trace, label)
    with pytest.raises(ValueError, match="trace"):
        chain.learn_trace(trace[:-1], 1)
    assert dumps_state(chain.state_dict()) == before


def test_drift_memory_inputs_its_quick_check_refuses_take_the_checked_path():
    """Defect found on the way: the checked path called ``.tolist()`` on the list that
    ``check_probability_vector`` returns (AttributeError for integer entries or a numpy
    integer label); now the same numbers as the quick path."""
    checked, quick = DriftMemory(8, 2, None), DriftMemory(8, 2, None)
    checked.observe([0, 1])
    quick.observe([0.0, 1.0])
    checked.learn([1, 0], np.int64(1))
    quick.learn([1.0, 0.0], 1)
    _same_state(checked, quick)


def test_a_feature_stage_gets_its_packed_input_in_the_core_bit_for_bit():
    """``[its input, the chain's input, features]`` packed in the core, as the loop packs
    it; features that explain part of the label the models miss."""
    def build(_):
        return [FixedShare(n_models=3, n_classes=2), OnlinePlatt(),
                FeatureCorrection(n_classes=2, n_models=3, n_features=4),
                DriftMemory(16, 2)]
    ours, oracle = Chain(build(None)), ReferenceChain(build(None))
    assert ours.native
    n = 25_000
    outputs, labels = _stream((3, 2), n, seed=17)
    rng = np.random.default_rng(18)
    features = rng.normal(size=(n, 4))
    labels = [int(y) if abs(f[0]) < 1.0 else int(f[0] > 0) for y, f in
              zip(labels, features, strict=True)]
    _replay([ours, oracle], outputs, labels, seed=19, features=features)
    _same_state(ours, oracle)
    with pytest.raises(ValueError, match="features"):
        ours.observe_predict_trace(outputs[0])
    _same_state(ours, oracle)


@pytest.mark.parametrize(("name", "build", "shape"), CHAINS, ids=[c[0] for c in CHAINS])
def test_outputs_as_decoded_lists_serve_what_the_array_serves(name, build, shape):
    """``observe_predict_rows`` (the pipeline's path: the decoded record's lists, no
    array made) serves the same outputs and traces, bit for bit, and leaves the same
    state as ``observe_predict_trace`` on the float64 array of the same lists; integers
    (beyond 2**53 too) convert as numpy converts them. Anything else (a tuple, a wrong
    length, a bool, a string) is declined with nothing changed."""
    by_rows, by_array = Chain(build(Portfolio)), Chain(build(Portfolio))
    outputs, labels = _stream(shape, 3_000, seed=11)
    for t, (x, y) in enumerate(zip(outputs, labels, strict=True)):
        rows = x.tolist()
        if shape[1] is None and t % 97 == 0:  # integers, as a decoder may give them
            rows = [int(v * 1e3) for v in rows]
            rows[0] = 2**60 + 1  # not exactly representable: numpy's rounding
        got = by_rows.observe_predict_rows(rows)
        assert got is not None, t
        want = by_array.observe_predict_trace(np.array(rows, dtype=np.float64))
        assert np.array_equal(got[0], want[0]) and got[0].shape == want[0].shape, t
        for ours, theirs in zip(got[1], want[1], strict=True):
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs), t
        by_rows.learn_trace(got[1], y)
        by_array.learn_trace(want[1], y)
    _same_state(by_rows, by_array)
    row = outputs[0].tolist()
    refused = [tuple(row), row[:-1], [*row, row[0]], np.asarray(row)]
    if shape[1] is None:
        refused += [[True, *row[1:]], ["0.5", *row[1:]], [[v] for v in row]]
    else:
        refused += [[[True, False], *row[1:]] if shape[1] == 2 else [row[0][:-1], *row[1:]],
                    [tuple(row[0]), *row[1:]], [row[0] + [0.0], *row[1:]]]
    before = dumps_state(by_rows.state_dict())
    for rows in refused:
        assert by_rows.observe_predict_rows(rows) is None, rows
    assert dumps_state(by_rows.state_dict()) == before
