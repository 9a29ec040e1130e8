"""Registration of adapters for the generic contract suite (``test_contract.py``).

Every adapter gets one or more ``AdapterCase`` in a ``cases_*.py`` module next to this
file; the contract suite then checks it like every other adapter: JSON round trip is
bit exact, batch forms equal the sequential loop, bad inputs raise ``ValueError`` and
leave the state untouched, same seed gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamweights.adapters.base import Adapter


@dataclass
class AdapterCase:
    """How to drive one adapter configuration in the contract suite.

    ``make_inputs(rng, n)`` returns n valid inputs, ``make_labels(rng, xs)`` a valid
    label for each; ``bad_inputs`` / ``bad_labels`` are (description, value) pairs that
    must each raise ``ValueError``; ``word`` is a substring expected in each message
    (per entry, optional).
    """

    name: str
    factory: Callable[[], Adapter]
    make_inputs: Callable[[np.random.Generator, int], list[Any]]
    make_labels: Callable[[np.random.Generator, list[Any]], list[Any]]
    bad_inputs: list[tuple[str, Any]] = field(default_factory=list)
    bad_labels: list[tuple[str, Any]] = field(default_factory=list)
    uses_observe: bool = False

    def __str__(self) -> str:
        return self.name


def probability_inputs(n_rows: int | None, n_classes: int) -> Callable[..., list[Any]]:
    """Random probability vectors ``(C,)`` (``n_rows is None``) or rows ``(K, C)``."""

    def make(rng: np.random.Generator, n: int) -> list[Any]:
        shape = (n, n_classes) if n_rows is None else (n, n_rows, n_classes)
        logits = rng.normal(scale=2.0, size=shape)
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return list(p / p.sum(axis=-1, keepdims=True))

    return make


def class_labels(n_classes: int) -> Callable[..., list[Any]]:
    def make(rng: np.random.Generator, xs: list[Any]) -> list[Any]:
        return [int(v) for v in rng.integers(0, n_classes, size=len(xs))]

    return make


def bad_probability_inputs(n_rows: int | None, n_classes: int) -> list[tuple[str, Any]]:
    """NaN, inf, wrong shape, not summing to one, negative entries."""
    shape = (n_classes,) if n_rows is None else (n_rows, n_classes)
    good = np.full(shape, 1.0 / n_classes)
    nan = good.copy()
    nan.flat[0] = np.nan
    inf = good.copy()
    inf.flat[0] = np.inf
    not_summing = good * 0.9
    negative = good.copy()
    negative.flat[0] = -0.2
    negative.flat[1] += 0.2
    wrong = np.full((*shape[:-1], n_classes + 1), 1.0 / (n_classes + 1))
    return [("NaN", nan), ("inf", inf), ("shape", wrong), ("sum", not_summing),
            ("[0, 1]", negative), ("numeric", "not numbers")]


def bad_class_labels(n_classes: int) -> list[tuple[str, Any]]:
    return [("unknown class", n_classes), ("unknown class", -1), ("integer", 0.5),
            ("integer", "cat"), ("integer", None)]
