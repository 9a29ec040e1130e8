"""Reference oracles: the numpy implementations the native core was ported from.

One production implementation per algorithm lives in the core (``native/src``) behind the
Python handles in ``streamweights.adapters``; the code here is the previous numpy one,
kept only for differential tests (``tests/adapters/test_native_*.py``): same inputs, the
core's outputs must match it within 1e-9 relative over long drifting streams.

An oracle class has the production class's name, so its ``state_dict`` reads as the
production adapter's and snapshots move between the two in either direction; it is kept
out of the adapter registry (``build_adapter`` must never build an oracle).
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters import base
from streamweights.adapters.base import Adapter


class Oracle(Adapter):
    """Base of the reference classes: an ``Adapter`` that does not register itself or its
    subclasses (``Adapter.__init_subclass__`` would, under the production name)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        object.__init_subclass__(**kwargs)


base._REGISTRY.pop(Oracle.__name__, None)  # registered by Adapter on its creation
