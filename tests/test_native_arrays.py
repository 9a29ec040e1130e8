"""How the core reads and makes NumPy arrays (``native/src/arrays.rs``): a C-contiguous
native float64 array is read through NumPy's C API; anything else (another byte order,
another dtype, a strided view, a list) is read the slower way as before, to the same
values; arrays the lane makes are ordinary, owned, writable float64 arrays."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights import (
    DriftMemory,
    Hedge,
    KalmanWeights,
    OnlinePlatt,
    OnlineTemperature,
    PriorShift,
)
from streamweights.adapters import FeatureCorrection, dumps_state, loads_state
from streamweights.pipeline import Pipeline
from tests.test_pipeline_batch import _replay, _streams


def _core(n_models: int = 3) -> object:
    return Hedge(n_models=n_models, n_classes=2)._core


def _rows(seed: int, n_models: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, size=n_models)
    return np.stack([p, 1.0 - p], axis=1)  # (models, classes), C-ordered float64


@pytest.mark.parametrize("seed", range(5))
def test_every_readable_form_gives_the_same_mixture(seed: int) -> None:
    rows = _rows(seed)
    flat = rows.ravel()
    expected = _core().predict_checked(flat)
    forms = {
        "2-D": rows,  # any shape when C-contiguous: read in memory order
        "big-endian": flat.astype(">f8"),
        "strided": np.stack([flat, np.zeros(flat.size)], axis=1)[:, 0],
        "list": flat.tolist(),
        "tuple": tuple(flat),
    }
    for name, form in forms.items():
        assert _core().predict_checked(form) == expected, name


def test_a_float32_array_is_read_as_its_float64_values() -> None:
    flat = _rows(9).astype(np.float32).ravel()
    assert _core().predict_checked(flat) == _core().predict_checked(flat.astype(np.float64))


def test_a_wrong_dtype_is_refused_not_reinterpreted() -> None:
    with pytest.raises((TypeError, ValueError)):
        _core().predict_checked(np.array([1, 0, 1, 0, 1, 0], dtype=np.int64).view("S8"))


def test_the_lanes_arrays_are_owned_writable_float64() -> None:
    """The join keeps the flat record and the conformal thresholds the lane made: plain
    C-ordered float64 arrays that own their memory (as ``numpy.empty`` made them)."""
    pipeline = Pipeline(_streams("demo.yaml"))
    lane = pipeline.record_lane()
    assert lane is not None
    taken = 0
    for raw in _replay(400):
        taken += lane.process(raw, False) is not None
    assert taken > 0
    entries = pipeline.streams["demo"].join.waiting()
    assert entries
    for entry in entries:
        for name, array in entry.payload.items():
            assert type(array) is np.ndarray, name
            assert array.dtype == np.float64 and array.flags.c_contiguous, name
            assert array.flags.owndata and array.flags.writeable, name
        assert entry.payload["buffer"].ndim == 1
        assert entry.payload["conformal"].ndim == 2


def test_the_lanes_flat_payload_reads_as_the_dict_it_replaced() -> None:
    """Scenario: the lane keeps a prediction's payload as the core's vectors; Python
    reads ``payload`` (a snapshot, the general path), compares entries and restores a
    snapshot. We expect: each read is a fresh dict ``{"buffer", "conformal"}`` with the
    same numbers; an entry equals itself and a copy restored from the snapshot (whose
    payload is a given dict again) holds the same numbers; the restored pipeline's
    entries are not flat and its lane still learns from them."""
    pipeline = Pipeline(_streams("demo.yaml"))
    lane = pipeline.record_lane()
    for raw in _replay(400):
        lane.process(raw, False)
    join = pipeline.streams["demo"].join
    entry, other = join.waiting()[:2]
    first, second = entry.payload, entry.payload
    assert first is not second and list(first) == ["buffer", "conformal"]
    assert all(np.array_equal(first[key], second[key]) for key in first)
    assert entry == entry and entry != other
    assert repr(entry).startswith(f"Pending(id={entry.id!r}, ts={entry.ts!r}, payload={{")
    restored = Pipeline(_streams("demo.yaml"))
    restored.load_state_dict(loads_state(dumps_state(pipeline.state_dict())))
    twin = restored.streams["demo"].join.get(entry.id)
    assert type(twin.payload) is dict
    assert all(np.array_equal(np.asarray(twin.payload[key]), first[key]) for key in first)
    # Both sides continue alike: the flat entries and the restored ones learn the same.
    rest = _replay(800)[400:]
    restored_lane = restored.record_lane()
    got = [restored_lane.process(raw, True) for raw in rest]
    want = [lane.process(raw, True) for raw in rest]
    assert any(type(done[1]) is bytes for done in want if done)
    assert [done[1] if done else None for done in got] == \
        [done[1] if done else None for done in want]


def _adapters() -> list:
    return [OnlinePlatt(), OnlineTemperature(n_classes=2), PriorShift(n_classes=2),
            DriftMemory(n_classes=2, capacity=8), KalmanWeights(n_features=2)]


@pytest.mark.parametrize("index", range(5))
def test_per_event_verbs_read_every_form_alike(index: int) -> None:
    """A C-contiguous float64 input is copied through NumPy's C API; a big-endian one, a
    strided view and a list take the older paths. Fed the same values in each form, two
    copies of an adapter learn and serve the same numbers, bit for bit."""
    rng = np.random.default_rng(index)
    fast, slow = _adapters()[index], _adapters()[index]
    for step in range(300):
        q = float(rng.uniform(0.05, 0.95))
        x = np.array([1.0 - q, q])
        forms = [x.astype(">f8"), np.stack([x, x], axis=1)[:, 0], x.tolist()]
        other = forms[step % 3]
        assert np.array_equal(fast.predict(x), slow.predict(other)), step
        label = int(rng.random() < q)
        fast.learn(x, label if index != 4 else q)
        slow.learn(other, label if index != 4 else q)
    assert np.array_equal(fast.predict(x), slow.predict(x.tolist()))


def _unaligned(values: np.ndarray) -> np.ndarray:
    """The same float64 values in a C-contiguous array whose data is not 8-byte aligned
    (a view one byte into a buffer): read byte for byte, not as aligned doubles."""
    array = np.frombuffer(b"\0" + values.astype(np.float64).tobytes(), dtype=np.float64,
                          offset=1)
    assert array.flags.c_contiguous and not array.flags.aligned
    return array


def test_an_unaligned_array_reads_as_its_values() -> None:
    rows = _rows(11).ravel()
    assert _core().predict_checked(_unaligned(rows)) == _core().predict_checked(rows)
    temperature = OnlineTemperature(n_classes=2)
    x = np.array([0.3, 0.7])
    assert np.array_equal(temperature.predict(_unaligned(x)), temperature.predict(x))


def test_feature_correction_reads_every_form_alike() -> None:
    """FeatureCorrection's per-event verbs take a packed float64 vector directly and
    convert anything else first (a list, float32, another byte order, an unaligned or
    strided view): two copies fed the same values learn and serve the same bits."""
    rng = np.random.default_rng(3)
    fast = FeatureCorrection(n_classes=2, n_models=2, n_features=3)
    slow = FeatureCorrection(n_classes=2, n_models=2, n_features=3)
    for step in range(400):
        p = rng.dirichlet([1.0, 1.0])
        packed = FeatureCorrection.pack(p, rng.dirichlet([1.0, 1.0], size=2),
                                        rng.normal(size=3))
        forms = [packed.tolist(), packed.astype(">f8"), _unaligned(packed),
                 np.stack([packed, packed], axis=1)[:, 0]]
        other = forms[step % len(forms)]
        served = fast.predict(packed)
        assert served.dtype == np.float64 and served.shape == (2,)
        assert np.array_equal(served, slow.predict(other)), step
        label = int(rng.random() < p[1])
        fast.learn(packed, label)
        slow.learn(other, label)
    assert np.array_equal(fast.head_weights_, slow.head_weights_)
    with pytest.raises(ValueError, match="expected shape"):
        fast.predict(np.zeros(3))
