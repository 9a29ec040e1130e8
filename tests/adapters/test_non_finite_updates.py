"""An update that would make an ensemble's state non-finite is refused before anything
changes (issue 12, Why 2): before, one regression output above ~1.3e154 overflowed the
squared loss; FixedShare then raised ZeroDivisionError on every later label, Hedge a
ValueError, and OnlineStacking's weights all became NaN for good."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from streamweights.adapters import FixedShare, Hedge, OnlineStacking
from streamweights.adapters.validation import NonFiniteUpdate

ENSEMBLES = [FixedShare, Hedge, OnlineStacking]


def _state(adapter) -> bytes:
    return orjson.dumps(adapter.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


# numpy warns of the overflow it computed; what matters is that nothing was kept of it.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("ensemble", ENSEMBLES)
@pytest.mark.parametrize("huge", [2e154, -1e300, 1.7e308])
def test_overflowing_update_is_refused_and_changes_nothing(ensemble, huge):
    adapter = ensemble(n_models=2)
    rng = np.random.default_rng(3)
    for _ in range(20):
        target = rng.normal(10, 3)
        adapter.learn(np.array([target + rng.normal(), target + 2 * rng.normal()]), target)
    before = _state(adapter)
    with pytest.raises(NonFiniteUpdate):
        adapter.learn(np.array([huge, 10.0]), 10.0)
    with pytest.raises(ValueError):  # the refusal is a ValueError, as the contract says
        adapter.learn_many(np.array([[9.0, 10.0], [huge, 10.0]]), np.array([10.0, 10.0]))
    assert _state(adapter) == before
    # ... and the next ordinary label is learned as if the refused one never came.
    reference = ensemble(n_models=2)
    reference.load_state_dict(adapter.state_dict())
    adapter.learn(np.array([9.0, 11.0]), 10.0)
    reference.learn(np.array([9.0, 11.0]), 10.0)
    assert _state(adapter) == _state(reference)
    assert np.isfinite(adapter.weights_).all()
