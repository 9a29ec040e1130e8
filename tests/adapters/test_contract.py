"""One generic suite over every registered adapter (see ``contract.py``).

A new adapter is tested here by adding an ``AdapterCase`` for it to a ``cases_*.py``
module: JSON round trip, batch = sequential, bad input, determinism.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import pathlib
import pickle

import numpy as np
import pytest

from streamweights.adapters.base import configs_packed, restore_adapter
from streamweights.adapters.state_codec import dumps_state, encode_state, loads_state, pack_state

_HERE = pathlib.Path(__file__).parent
CASES = []
for _path in sorted(_HERE.glob("cases_*.py")):
    _module = importlib.import_module(f"tests.adapters.{_path.stem}")
    CASES.extend(_module.CASES)


def _drive(adapter, case, xs, ys, collect):
    """Feed events the way the pipeline does: observe, predict, then learn."""
    outputs = []
    for x, y in zip(xs, ys, strict=True):
        if case.uses_observe:
            adapter.observe(x)
        outputs.append(np.asarray(adapter.predict(x)))
        adapter.learn(x, y)
    if collect:
        return outputs
    return None


def _stream(case, seed, n):
    rng = np.random.default_rng(seed)
    xs = case.make_inputs(rng, n)
    ys = case.make_labels(rng, xs)
    return xs, ys


@pytest.mark.parametrize("case", CASES, ids=str)
def test_json_round_trip_is_bit_exact(case):
    original = case.factory()
    xs, ys = _stream(case, 1, 1300)
    _drive(original, case, xs[:300], ys[:300], collect=False)
    original.on_drift()
    text = json.dumps(encode_state(original.state_dict()))
    restored = restore_adapter(loads_state(text))
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())
    out_original = _drive(original, case, xs[300:], ys[300:], collect=True)
    out_restored = _drive(restored, case, xs[300:], ys[300:], collect=True)
    for a, b in zip(out_original, out_restored, strict=True):
        assert a.tobytes() == b.tobytes()
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_continue_bit_exact_and_apart(case, how):
    """A pickled or deep-copied adapter (compiled core included) has the original's state
    and goes on with the same output bytes; the two then live apart: feeding one leaves
    the other's state as it was."""
    original = case.factory()
    xs, ys = _stream(case, 6, 600)
    _drive(original, case, xs[:200], ys[:200], collect=False)
    twin = pickle.loads(pickle.dumps(original)) if how == "pickle" else copy.deepcopy(original)
    assert type(twin) is type(original)
    assert dumps_state(twin.state_dict()) == dumps_state(original.state_dict())
    out_original = _drive(original, case, xs[200:400], ys[200:400], collect=True)
    out_twin = _drive(twin, case, xs[200:400], ys[200:400], collect=True)
    assert [a.tobytes() for a in out_twin] == [a.tobytes() for a in out_original]
    assert dumps_state(twin.state_dict()) == dumps_state(original.state_dict())
    kept = dumps_state(original.state_dict())
    _drive(twin, case, xs[400:], ys[400:], collect=False)
    assert dumps_state(original.state_dict()) == kept
    assert dumps_state(twin.state_dict()) != kept


@pytest.mark.parametrize("case", CASES, ids=str)
def test_load_state_dict_into_fresh_instance(case):
    original = case.factory()
    xs, ys = _stream(case, 2, 200)
    _drive(original, case, xs, ys, collect=False)
    fresh = case.factory()
    fresh.load_state_dict(original.state_dict())
    assert dumps_state(fresh.state_dict()) == dumps_state(original.state_dict())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_is_a_copy(case):
    adapter = case.factory()
    xs, ys = _stream(case, 3, 50)
    snapshot_text = dumps_state(adapter.state_dict())
    snapshot = adapter.state_dict()
    _drive(adapter, case, xs, ys, collect=False)
    assert dumps_state(snapshot) == snapshot_text


def _mutable_parts(tree, found):
    """ids of every list, dict and array in a state tree (what a caller could mutate)."""
    if isinstance(tree, dict | list | np.ndarray):
        found[id(tree)] = tree  # (kept alive, so ids are not reused while comparing)
    if isinstance(tree, dict):
        for value in tree.values():
            _mutable_parts(value, found)
    elif isinstance(tree, list | tuple):
        for value in tree:
            _mutable_parts(value, found)
    return found


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dicts_share_nothing_mutable(case):
    """Two ``state_dict`` calls share no list, dict or array, with each other or with the
    adapter: what ``fresh_state`` adapters skip the deep copy for must really be new."""
    adapter = case.factory()
    xs, ys = _stream(case, 4, 80)
    _drive(adapter, case, xs, ys, collect=False)
    first = _mutable_parts(adapter.state_dict(), {})
    second = _mutable_parts(adapter.state_dict(), {})
    assert not set(first) & set(second)
    text = dumps_state(adapter.state_dict())
    for part in first.values():  # scribble over the first copy: the adapter is untouched
        if isinstance(part, np.ndarray) and part.size and part.dtype.kind == "f":
            part.fill(np.nan)
        elif isinstance(part, list):
            part.clear()
    assert dumps_state(adapter.state_dict()) == text


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_loaded_state_is_not_the_callers(case):
    """``load_state_dict`` keeps a copy, nested adapters' parts included (containers hand
    their parts down without copying them again): scribbling over the tree loaded from
    leaves the adapter as it was."""
    original = case.factory()
    xs, ys = _stream(case, 5, 80)
    _drive(original, case, xs, ys, collect=False)
    snapshot = original.state_dict()
    fresh = case.factory()
    fresh.load_state_dict(snapshot)
    text = dumps_state(fresh.state_dict())
    for part in _mutable_parts(snapshot, {}).values():
        if isinstance(part, np.ndarray) and part.size and part.dtype.kind == "f":
            part.fill(np.nan)
        elif isinstance(part, np.ndarray) and part.size and part.dtype.kind in "iu":
            part.fill(7)
        elif isinstance(part, list) and part and all(type(v) is float for v in part):
            part[:] = [math.nan] * len(part)
    assert dumps_state(fresh.state_dict()) == text


def _strided(x: np.ndarray) -> np.ndarray:
    """The same values in a view that is not C-contiguous (every other element of a
    buffer twice as long along the first axis)."""
    spread = np.zeros((2 * x.shape[0], *x.shape[1:]))
    spread[::2] = x
    return spread[::2]


def _other_form(value, form):
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim:
        return value.tolist() if form == "list" else _strided(value)
    return value


def _numpy_scalar(label):
    return np.int64(label) if type(label) is int else (
        np.float64(label) if type(label) is float else label)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("form", ["list", "strided"])
def test_the_form_of_an_input_decides_nothing(case, form):
    """Inputs as nested lists or as non-contiguous views, labels as numpy scalars, give
    the same output bytes and state as float64 arrays and Python numbers: the compiled
    cores' quick paths take only the latter, everything else goes through Python's checks,
    and the two ways must agree."""
    xs, ys = _stream(case, 7, 300)
    usual = case.factory()
    out_usual = _drive(usual, case, xs, ys, collect=True)
    other = case.factory()
    out_other = _drive(other, case, [_other_form(x, form) for x in xs],
                       [_numpy_scalar(y) for y in ys], collect=True)
    assert [a.tobytes() for a in out_other] == [a.tobytes() for a in out_usual]
    assert dumps_state(other.state_dict()) == dumps_state(usual.state_dict())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_batch_forms_equal_sequential_loop(case):
    xs, ys = _stream(case, 4, 400)
    warm_xs, warm_ys = _stream(case, 5, 100)
    sequential, batched = case.factory(), case.factory()
    for adapter in (sequential, batched):
        _drive(adapter, case, warm_xs, warm_ys, collect=False)
    many = np.asarray(batched.predict_many(xs))
    loop = np.stack([np.asarray(sequential.predict(x)) for x in xs])
    assert many.shape == loop.shape
    np.testing.assert_allclose(many, loop, rtol=1e-12, atol=1e-15)
    if case.uses_observe:
        batched.observe_many(xs)
        for x in xs:
            sequential.observe(x)
    batched.learn_many(xs, ys)
    for x, y in zip(xs, ys, strict=True):
        sequential.learn(x, y)
    assert dumps_state(batched.state_dict()) == dumps_state(sequential.state_dict())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_seed_same_numbers(case):
    xs, ys = _stream(case, 6, 500)
    first, second = case.factory(), case.factory()
    out_first = _drive(first, case, xs, ys, collect=True)
    out_second = _drive(second, case, xs, ys, collect=True)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(out_first, out_second, strict=True))
    assert dumps_state(first.state_dict()) == dumps_state(second.state_dict())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_inputs_raise_and_change_nothing(case):
    adapter = case.factory()
    xs, ys = _stream(case, 7, 50)
    _drive(adapter, case, xs, ys, collect=False)
    before = dumps_state(adapter.state_dict())
    assert case.bad_inputs, "every adapter case must list bad inputs"
    for word, bad in case.bad_inputs:
        for verb in ("predict", "learn", "observe"):
            with pytest.raises(ValueError) as error:
                if verb == "learn":
                    adapter.learn(bad, ys[0])
                else:
                    getattr(adapter, verb)(bad)
                    if verb == "observe" and not case.uses_observe:
                        raise ValueError(word)  # observe is a documented no-op here
            assert word.lower() in str(error.value).lower(), (verb, word, str(error.value))
    for word, bad in case.bad_labels:
        with pytest.raises(ValueError) as error:
            adapter.learn(xs[0], bad)
        assert word.lower() in str(error.value).lower(), (word, str(error.value))
    assert dumps_state(adapter.state_dict()) == before


@pytest.mark.parametrize("case", CASES, ids=str)
def test_load_refuses_foreign_snapshot(case):
    adapter = case.factory()
    state = adapter.state_dict()
    wrong_version = dict(state, version=state["version"] + 1)
    with pytest.raises(ValueError, match="version"):
        adapter.load_state_dict(wrong_version)
    wrong_name = dict(state, adapter="SomethingElse")
    with pytest.raises(ValueError, match="SomethingElse"):
        adapter.load_state_dict(wrong_name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_configs_packed_write_the_same_record_bytes(case):
    """Inside ``configs_packed`` (how a stream's record is written) each config is packed
    once and kept: the packed form is the same bytes as the plain tree's, at the first
    such call and after the state moved on, and a plain ``state_dict`` afterwards still
    holds dict configs (the kept part does not leak out)."""
    adapter = case.factory()
    xs, ys = _stream(case, 8, 400)
    for part in (slice(0, 150), slice(150, 400)):
        _drive(adapter, case, xs[part], ys[part], collect=False)
        with configs_packed():
            packed = adapter.state_dict()
        plain = adapter.state_dict()
        assert pack_state(packed) == pack_state(plain)
        assert isinstance(plain["config"], dict)
        assert dumps_state(adapter.state_dict()) == dumps_state(plain)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_packing_a_config_gives_the_adapter_no_dict_of_its_own(case):
    """Packing the config at a commit keeps it on the adapter without asking for the
    instance's ``__dict__``, which would make CPython give every adapter a dict of its
    own: one more object per stage that the collector walks at every full collection
    (30,000 at 10,000 streams, made after the start-up heap was frozen). We expect: no
    dict holding the kept part among the adapter's referents, and the part kept."""
    import gc

    adapter = case.factory()
    xs, ys = _stream(case, 9, 50)
    _drive(adapter, case, xs, ys, collect=False)
    with configs_packed():
        adapter.state_dict()
    assert adapter._config_part is not None
    assert not [r for r in gc.get_referents(adapter)
                if type(r) is dict and "_config_part" in r]


def test_configs_packed_holds_for_its_own_thread_only():
    """A scrape or another thread asking a state while a commit packs configs gets dicts."""
    import threading

    adapter = CASES[0].factory()
    seen = []
    with configs_packed():
        inside = adapter.state_dict()["config"]
        thread = threading.Thread(target=lambda: seen.append(adapter.state_dict()["config"]))
        thread.start()
        thread.join()
    assert not isinstance(inside, dict) and isinstance(seen[0], dict)
