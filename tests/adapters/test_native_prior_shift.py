"""PriorShift in the native core against its numpy reference (``tests/reference``).

The core sums over classes left to right, as the reference's Python ``sum()`` does on
Python 3.11; the reference's ``predict`` renormalised with numpy's ``sum``, which is left
to right below 8 classes and pairwise from 8 on. So below 8 classes the two agree bit
for bit on this Python (checked here), and within 1e-9 relative in every case (checked
here over 10^5 events on drifting class mixes, 10 classes included).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from streamweights.adapters import PriorShift
from streamweights.adapters.base import restore_adapter
from streamweights.adapters.state_codec import dumps_state, encode_state, loads_state
from tests.reference.prior_shift import PriorShift as ReferencePriorShift

N_EVENTS = 100_000
RELATIVE = 1e-9
#: Python's float ``sum()`` became compensated in 3.12; bit equality holds up to 3.11.
PLAIN_PYTHON_SUM = sys.version_info < (3, 12)


def _drifting_mix_stream(seed: int, n_events: int, n_classes: int) -> tuple[np.ndarray,
                                                                            list[int]]:
    """Calibrated posteriors of unit Gaussians at distinct means (source mix uniform) with
    a target class mix that stays put for the first 5,000 events, then jumps every
    15,000 and drifts linearly in between."""
    rng = np.random.default_rng(seed)
    anchors = rng.dirichlet(np.full(n_classes, 0.7), size=-(-n_events // 15_000) + 1)
    anchors[0] = 1.0 / n_classes
    position = np.maximum(np.arange(n_events) - 5000, 0) / 15_000
    index = np.minimum(position.astype(int), len(anchors) - 2)
    fraction = (position - index)[:, None]
    mix = (1 - fraction) * anchors[index] + fraction * anchors[index + 1]
    mix = np.maximum(mix, 1e-3)
    mix /= mix.sum(axis=1, keepdims=True)
    labels = (rng.random((n_events, 1)) > mix.cumsum(axis=1)).sum(axis=1)
    labels = np.minimum(labels, n_classes - 1)
    centres = 2.0 * rng.normal(size=(n_classes, 2))
    points = centres[labels] + rng.normal(size=(n_events, 2))
    logits = -0.5 * ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    logits -= logits.max(axis=1, keepdims=True)
    posteriors = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return posteriors, [int(v) for v in labels]


CONFIGS = {
    "default-learned-source-gate": (3, dict()),
    "given-source-keep-on-drift": (3, dict(source_prior=[0.5, 0.3, 0.2], min_step=0.01,
                                           label_weight=3.0, reset_on_drift=False)),
    "short-window-low-gate": (4, dict(source_window=50, evidence_threshold=0.5,
                                      min_step=0.02)),
    "ten-classes-no-gate": (10, dict(evidence_threshold=0.0, min_step=0.005)),
}


def _relative_gap(got: np.ndarray, want: np.ndarray) -> float:
    scale = np.maximum(np.abs(want).max(axis=-1, keepdims=True), 1e-300)
    return float(np.max(np.abs(got - want) / scale))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_core_matches_numpy_reference_over_100k_drifting_events(name):
    """Scenario: core and reference see the same 10^5 events (observe, predict, and a
    label for two events in three), a drift alarm every 25,000. We expect: every served
    output, the estimate, the source prior and the gate's evidence within 1e-9 relative,
    the gate open and closed on the same events; below 8 classes (on Python <= 3.11)
    all of it bit for bit."""
    n_classes, config = CONFIGS[name]
    core = PriorShift(n_classes, **config)
    reference = ReferencePriorShift(n_classes, **config)
    posteriors, labels = _drifting_mix_stream(21, N_EVENTS, n_classes)
    got = np.empty((N_EVENTS, n_classes))
    want = np.empty_like(got)
    priors_got, priors_want = np.empty_like(got), np.empty_like(got)
    gates = np.empty((N_EVENTS, 2), dtype=bool)
    evidence = np.empty((N_EVENTS, 2))
    for index in range(N_EVENTS):
        p = posteriors[index]
        core.observe(p)
        reference.observe(p)
        got[index] = core.predict(p)
        want[index] = reference.predict(p)
        if index % 3:
            core.learn(p, labels[index])
            reference.learn(p, labels[index])
        if index % 25_000 == 24_999:
            core.on_drift()
            reference.on_drift()
        priors_got[index], priors_want[index] = core.prior_, reference.prior_
        gates[index] = core.correcting, reference.correcting
        evidence[index] = core.evidence_, reference.evidence_
    assert gates[:, 1].any(), "the stream must open the gate for this test to mean much"
    assert np.array_equal(gates[:, 0], gates[:, 1])
    gap = _relative_gap(got, want)
    print(f"{name}: largest relative gap of an output {gap:.3g}")  # for the closing note
    assert gap < RELATIVE
    assert _relative_gap(priors_got, priors_want) < RELATIVE
    np.testing.assert_allclose(evidence[:, 0], evidence[:, 1], rtol=RELATIVE, atol=1e-12)
    np.testing.assert_allclose(core.source_prior, reference.source_prior, rtol=RELATIVE)
    assert core.steps == reference.steps
    if n_classes < 8 and PLAIN_PYTHON_SUM:
        assert got.tobytes() == want.tobytes()
        assert dumps_state(core.state_dict()) == dumps_state(reference.state_dict())


def test_batch_verbs_and_round_trip_are_bit_exact():
    """Scenario: over 20,000 events in batches of 1 to 500, one core corrector runs
    ``observe_many`` / ``predict_many`` / ``learn_many`` on each batch, a twin the
    per-event verbs in the same order, and a third is restored from a JSON snapshot of
    the twin halfway. We expect: the same
    outputs and the same final state, bit for bit."""
    posteriors, labels = _drifting_mix_stream(22, 20_000, 3)
    config = dict(source_window=200, evidence_threshold=1.0)
    loop, batched = PriorShift(3, **config), PriorShift(3, **config)
    restored = None
    loop_out, batch_out, restored_out = [], [], []
    bounds = np.cumsum(np.random.default_rng(23).integers(1, 501, size=200))
    starts = [0, *bounds[bounds < 20_000]]
    for start, stop in zip(starts, [*starts[1:], 20_000], strict=True):
        rows, ys = posteriors[start:stop], labels[start:stop]
        batched.observe_many(rows)
        batch_out.append(batched.predict_many(rows))
        batched.learn_many(rows, ys)
        # The loop does per event what the batch verbs do per batch, in the same order.
        for adapter, outputs in ((loop, loop_out), (restored, restored_out)):
            if adapter is None:
                continue
            for p in rows:
                adapter.observe(p)
            outputs.extend(adapter.predict(p) for p in rows)
            for p, y in zip(rows, ys, strict=True):
                adapter.learn(p, y)
        if restored is None and stop >= 10_000:
            restored = restore_adapter(loads_state(json.dumps(encode_state(
                loop.state_dict()))))
    assert np.concatenate(batch_out).tobytes() == np.stack(loop_out).tobytes()
    assert np.stack(restored_out).tobytes() == np.stack(loop_out[-len(restored_out):]).tobytes()
    assert dumps_state(batched.state_dict()) == dumps_state(loop.state_dict())
    assert dumps_state(restored.state_dict()) == dumps_state(loop.state_dict())


def test_old_snapshot_without_source_window_loads_and_continues_like_the_reference():
    """Scenario: a snapshot in the layout from before the learned source prior (no
    ``source_window`` in its config, no source fields in its state) is loaded by the
    core and by the reference through ``upgrade_snapshot``. We expect: both continue
    with the uniform source it was estimated against, bit for bit alike."""
    posteriors, labels = _drifting_mix_stream(24, 3000, 3)
    old = {"adapter": "PriorShift", "version": 1,
           "config": {"n_classes": 3, "source_prior": None, "step_offset": 10.0,
                      "min_step": 0.001, "label_weight": 1.0, "reset_on_drift": True,
                      "prior_floor": 1e-4, "max_ratio": 20.0},
           "state": {"prior": [0.6, 0.3, 0.1], "steps": 420}}
    core, reference = PriorShift(3), ReferencePriorShift(3)
    core.load_state_dict(old)
    reference.load_state_dict(old)
    np.testing.assert_array_equal(core.source_prior, [1 / 3] * 3)
    for p, y in zip(posteriors, labels, strict=True):
        core.observe(p)
        reference.observe(p)
        assert core.predict(p).tobytes() == reference.predict(p).tobytes()
        core.learn(p, y)
        reference.learn(p, y)
    assert dumps_state(core.state_dict()) == dumps_state(reference.state_dict())


def test_every_input_layout_gives_the_same_numbers():
    """Scenario: the same probability vectors reach the core as contiguous float64 rows,
    strided column views, byte-swapped ('>f8') arrays and lists. We expect: identical
    outputs and states (a byte-swapped buffer must not be read as native floats)."""
    posteriors, labels = _drifting_mix_stream(25, 3000, 3)
    columns = np.ascontiguousarray(posteriors.T)
    layouts = {
        "contiguous": lambda i: posteriors[i],
        "strided": lambda i: columns[:, i],
        "byte-swapped": lambda i: posteriors[i].astype(">f8"),
        "list": lambda i: posteriors[i].tolist(),
    }
    correctors = {name: PriorShift(3, source_window=100, evidence_threshold=1.0)
                  for name in layouts}
    for i in range(3000):
        for name, make in layouts.items():
            correctors[name].observe(make(i))
        outputs = {correctors[name].predict(make(i)).tobytes()
                   for name, make in layouts.items()}
        assert len(outputs) == 1
        for name, make in layouts.items():
            correctors[name].learn(make(i), labels[i])
    assert len({dumps_state(c.state_dict()) for c in correctors.values()}) == 1
