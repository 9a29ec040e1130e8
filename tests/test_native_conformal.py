"""The native core's conformal layers, coverage monitors and performance estimates
against the plain-Python reference they replaced (``tests/reference``): a stream's whole
uncertainty layer fed the same drifting stream with delayed labels, every served set,
interval and kept threshold compared event by event, and the state at the end.

Thresholds, weights and levels follow the reference operation for operation and must be
the same floats; the estimates' window means sum left to right where the reference used
``math.fsum`` (within 1e-9 relative)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from streamweights import _native
from streamweights.adapters import dumps_state
from streamweights.uncertainty import StreamUncertainty
from tests.reference.conformal.scores import ScoreWindow as ReferenceWindow
from tests.reference.uncertainty import StreamUncertainty as ReferenceUncertainty

MODELS = ("a", "b", "c")


def _classification_stream(rng, n, n_classes):
    """Three models whose sharpness and accuracy drift; labels from a moving truth."""
    for t in range(n):
        phase = math.sin(t / 3_000.0)
        logits = rng.normal(scale=1.0 + 2.0 * abs(phase), size=(len(MODELS) + 1, n_classes))
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        if t % 1_013 == 0:
            p[1] = np.eye(n_classes)[0]        # a confident model, exact 0/1
        truth = p[0] if (t // 7_000) % 2 == 0 else p[-1]
        yield p[0], p[1:], int(rng.choice(n_classes, p=truth))


def _regression_stream(rng, n):
    for t in range(n):
        scale = 1.0 + 4.0 * ((t // 5_000) % 2)
        target = float(rng.normal(scale=scale))
        raw = np.array([target + rng.normal(scale=s) for s in (0.5, 1.0, 3.0)])
        yield float(raw.mean()), raw, target


def _compare(conformal, estimate, n_classes, events, seed, delay=50):
    rng = np.random.default_rng(seed)
    native = StreamUncertainty(conformal, estimate, MODELS, n_classes)
    oracle = ReferenceUncertainty(conformal, estimate, MODELS, n_classes)
    stream = (_classification_stream(rng, events, n_classes) if n_classes is not None
              else _regression_stream(rng, events))
    pending = deque()
    for served, raw, label in stream:
        got, want = native.serve(served, raw), oracle.serve(served, raw)
        assert got[0] == want[0]
        if want[1] is None:
            assert got[1] is None
        else:
            np.testing.assert_array_equal(got[1], want[1])
        pending.append((got[1], served, raw, label))
        if len(pending) > delay:
            kept, s, r, y = pending.popleft()
            native.learn(kept, s, r, y)
            oracle.learn(kept, s, r, y)
    if estimate:
        _summaries_close(native.summary(), oracle.summary())
    else:
        assert native.summary() == oracle.summary()
    for got, want in zip(native.state_dict()["layers"], oracle.state_dict()["layers"],
                         strict=True):
        assert got["config"] == want["config"]
        np.testing.assert_array_equal(got["state"]["scores"]["ring"],
                                      want["state"]["scores"]["ring"])
        for key, value in want["state"].items():
            if key != "scores":
                assert got["state"][key] == value, key
    for got, want in zip(native.state_dict()["monitors"], oracle.state_dict()["monitors"],
                         strict=True):
        assert got.keys() == want.keys()
        assert got["ring"].dtype == want["ring"].dtype == np.uint8
        np.testing.assert_array_equal(got.pop("ring"), want.pop("ring"))
        assert got == want
    return native


def _summaries_close(got, want):
    assert got["coverage"] == want["coverage"]
    for name, values in want["estimates"].items():
        for key, value in values.items():
            assert got["estimates"][name][key] == pytest.approx(value, rel=1e-9), (name, key)


@pytest.mark.slow
def test_dtaci_classification_with_estimates_matches_the_reference_over_1e5_events():
    native = _compare({"alpha": [0.1, 0.05], "method": "dtaci", "compare_raw": True},
                      {"window": 500}, 3, 100_000, seed=1)
    weights = native.layers[0].weights_[0]
    assert max(weights) > 0.2   # the stream really moved the experts' weights


@pytest.mark.parametrize(("method", "options"), [
    ("aci", {"step": 0.01}), ("pid", {}), ("pid", {"gain": 0.0}), ("dtaci", {}),
    ("dtaci", {"score": "aps", "window": 200}), ("aci", {"score": "aps"}),
    ("dtaci", {"steps": [0.002, 0.01, 0.05]})])  # not the default eight experts
def test_each_method_and_score_matches_the_reference(method, options):
    _compare({"alpha": [0.2, 0.1], "method": method, "compare_raw": True, **options},
             None, 4, 20_000, seed=2)


@pytest.mark.parametrize("method", ["aci", "pid", "dtaci"])
def test_regression_intervals_match_the_reference(method):
    _compare({"alpha": [0.1], "method": method, "compare_raw": False}, None, None, 20_000,
             seed=3)


def test_a_restored_layer_serves_the_same_thresholds_and_continues_identically():
    rng = np.random.default_rng(4)
    config = {"alpha": [0.1, 0.05], "method": "dtaci", "compare_raw": True}
    first = StreamUncertainty(config, {"window": 100}, MODELS, 3)
    events = list(_classification_stream(rng, 3_000, 3))
    for served, raw, label in events[:1_500]:
        kept = first.serve(served, raw)[1]
        first.learn(kept, served, raw, label)
    second = StreamUncertainty(config, {"window": 100}, MODELS, 3)
    second.load_state_dict(first.state_dict())
    for served, raw, label in events[1_500:]:
        a, b = first.serve(served, raw), second.serve(served, raw)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
        first.learn(a[1], served, raw, label)
        second.learn(b[1], served, raw, label)
    assert dumps_state(first.state_dict()) == dumps_state(second.state_dict())


def test_a_coverage_ring_is_written_as_an_array_and_read_from_either_form():
    """The rolling window's flags are a (labels, levels) uint8 array in a snapshot (packed
    as bytes); releases before wrote a list of rows of ints, which still loads to the
    same monitor. Rows of the wrong length or flags other than 0/1 are refused."""
    monitor = _native.CoverageCore(2, 5)
    flags = [[1, 0], [1, 1], [0, 0], [1, 1], [0, 1], [1, 0], [0, 1]]  # wraps once full
    for row in flags:
        monitor.record_served([2.0, math.inf])
        monitor.record_label(row)
    state = monitor.state_dict()
    ring = state["ring"]
    assert ring.dtype == np.uint8 and ring.shape == (5, 2) and state["head"] == 2
    np.testing.assert_array_equal(ring, [[1, 0], [0, 1], [0, 0], [1, 1], [0, 1]])
    counts = monitor.counts()
    assert counts[5] == 5 and counts[6] == [2, 3]  # rows held, covered among them
    for form in (ring, ring.tolist(), np.asfortranarray(ring)):
        loaded = _native.CoverageCore(2, 5)
        loaded.load_state_dict({**state, "ring": form})
        assert loaded.counts() == counts
        assert dumps_state(loaded.state_dict()) == dumps_state(state)
        loaded.record_label([1, 1])
        monitor_copy = _native.CoverageCore(2, 5)
        monitor_copy.load_state_dict(state)
        monitor_copy.record_label([1, 1])
        assert loaded.counts() == monitor_copy.counts()
    for bad in (np.zeros((5, 3), dtype=np.uint8), [[1, 0, 1]] * 5, [[2, 0]] * 5,
                np.zeros((6, 2), dtype=np.uint8)):
        with pytest.raises(ValueError, match="does not fit"):
            _native.CoverageCore(2, 5).load_state_dict({**state, "ring": bad})


def test_a_snapshot_that_does_not_fit_changes_nothing():
    config = {"alpha": [0.1], "method": "dtaci", "compare_raw": False}
    layer = StreamUncertainty(config, None, MODELS, 3).layers[0]
    for t in range(200):
        layer.learn([0.7, 0.2, 0.1], t % 3)
    before = repr(layer.state_dict())
    broken = layer.state_dict()
    broken["state"]["weights"] = [[0.5, 0.5]]   # two experts where there are eight
    with pytest.raises(ValueError, match="weights"):
        layer.load_state_dict(broken)
    assert repr(layer.state_dict()) == before


def test_core_serve_into_and_learn_from_the_array_equal_the_list_verbs():
    """The pipeline's path (``serve_into`` writing the thresholds into an array, ``learn``
    reading that array) keeps the same thresholds and state as ``serve`` / ``learn``
    with flat lists, event by event; an array of the wrong size is refused."""
    conformal = {"alpha": [0.1, 0.05], "method": "dtaci", "compare_raw": True}
    by_array = StreamUncertainty(conformal, {"window": 50}, MODELS, 3)
    by_list = StreamUncertainty(conformal, {"window": 50}, MODELS, 3)
    rng = np.random.default_rng(4)
    pending = deque()
    for served, raw, label in _classification_stream(rng, 3_000, 3):
        rows = [served.tolist(), *raw.tolist()]
        kept = np.empty(by_array._kept_shape)
        wire = by_array._core.serve_into(rows, kept)
        want_wire, flat, width = by_list._core.serve(rows)
        assert wire == want_wire and kept.ravel().tolist() == flat
        assert kept.shape == (len(by_list.layers), width)
        pending.append((kept, flat, rows, label))
        if len(pending) > 20:
            kept, flat, rows, label = pending.popleft()
            by_array._core.learn(kept, rows, label)
            by_list._core.learn(flat, rows, label)
    assert dumps_state(by_array.state_dict()) == dumps_state(by_list.state_dict())
    with pytest.raises((ValueError, BufferError)):
        by_array._core.serve_into(rows, np.empty(3))


@pytest.mark.parametrize("size", [2, 3, 17, 1000])
def test_score_window_keeps_the_references_sorted_copy_value_for_value(size):
    """Scenario: the core's score window (which moves the values between the evicted
    score's place and the new one's in one shift) and the reference's (delete, then
    insort) take the same scores: many exact ties, -0.0 beside 0.0, runs of one value,
    and continuous draws, past several wraps of the ring. We expect: after every push the
    same ring, head and sorted copy, float for float (signs of zero included)."""
    rng = np.random.default_rng(size)
    ours, reference = _native.ScoreWindowCore(size), ReferenceWindow(size)
    pools = [np.array([0.0, -0.0, 1.0, 0.5, 0.5, 2.0]), rng.random(7), rng.random(5000)]
    for step in range(6 * size + 3000):
        pool = pools[(step // 50) % 3]
        value = float(pool[rng.integers(len(pool))])
        ours.push(value)
        reference.push(value)
        got, want = ours.ordered, reference.ordered
        assert [(v, math.copysign(1.0, v)) for v in got] == \
            [(v, math.copysign(1.0, v)) for v in want], step
        assert ours.ring == reference.ring and ours.head == reference.head, step


def test_a_score_ring_loads_alike_from_every_form_it_can_come_in():
    """Scenario: a conformal layer after 1,200 events (its window of 1,000 wrapped), its
    state loaded with the score ring as the float64 array a snapshot gives, as a list
    (records before), a strided view, an unaligned view (a buffer at an odd offset: read
    bytewise, no alignment assumed), a big-endian copy and a Fortran-ordered 2-D column
    flattened by ``ravel``. We expect: every copy serves the same sets and ends in the
    same state bytes as the original; a 2-D ring and a ring of text are refused."""
    rng = np.random.default_rng(21)
    config = {"alpha": [0.1], "method": "dtaci", "compare_raw": False}
    layer = StreamUncertainty(config, None, MODELS, 3).layers[0]
    events = list(_classification_stream(rng, 1_600, 3))
    for served, _, label in events[:1_200]:
        layer.learn(served, label)
    state = layer.state_dict()
    ring = state["state"]["scores"]["ring"]
    assert ring.dtype == np.float64 and ring.ndim == 1 and len(ring) == 1000
    unaligned = np.frombuffer(b"\0" + ring.tobytes(), dtype=np.float64, offset=1)
    assert not unaligned.flags.aligned
    forms = [ring, ring.tolist(), np.repeat(ring, 2)[::2], unaligned, ring.astype(">f8"),
             np.asfortranarray(ring.reshape(-1, 1)).ravel()]
    copies = []
    for form in forms:
        copy = StreamUncertainty(config, None, MODELS, 3).layers[0]
        scores = {**state["state"]["scores"], "ring": form}
        copy.load_state_dict({**state, "state": {**state["state"], "scores": scores}})
        copies.append(copy)
    for served, _, label in events[1_200:]:
        sets = layer.predict(served)
        for copy in copies:
            np.testing.assert_array_equal(copy.predict(served), sets)
        for target in (layer, *copies):
            target.learn(served, label)
    assert all(dumps_state(copy.state_dict()) == dumps_state(layer.state_dict())
               for copy in copies)
    for bad in (ring.reshape(10, 100), ["x"] * 1000):
        scores = {**state["state"]["scores"], "ring": bad}
        with pytest.raises((ValueError, TypeError)):
            StreamUncertainty(config, None, MODELS, 3).layers[0].load_state_dict(
                {**state, "state": {**state["state"], "scores": scores}})
