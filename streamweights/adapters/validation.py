"""Input checks shared by every adapter.

Every public entry point of an adapter validates what it is given and raises
``ValueError`` naming the field and the problem, so the runtime can turn a bad record
into a dead-letter entry instead of a crash or a silent skip.

Probability vectors must be finite, lie in ``[0, 1]`` and sum to 1 within
``PROBABILITY_TOLERANCE`` (absolute). Within that tolerance they are renormalised, so
an upstream model that rounds its probabilities to three decimals is accepted.

``check_probability_vector`` (one event, Python floats) and
``check_probability_vector_rows`` (a batch) are fast paths of the probability checks for
hot per-event code: same verdicts and messages, and they renormalise alike, so a batch
path built on the second matches a per-event path built on the first bit for bit.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

#: Absolute tolerance on ``sum(p) == 1``. Models commonly emit float32 softmax outputs
#: (error ~1e-7 per class) or JSON rounded to 3-4 decimals (error up to ~5e-4 for
#: C <= 10 classes), so 1e-3 accepts both while still rejecting logits or scores.
PROBABILITY_TOLERANCE = 1e-3


class NonFiniteUpdate(ValueError):  # noqa: N818 - reads as what happened, like the others
    """An update refused because it would make an adapter's state non-finite; raised
    before anything changed, so the adapter keeps its last good state."""


def check_finite_update(values: np.ndarray, name: str) -> None:
    """Refuse an update whose inputs (losses, gradients) are not all finite. The sum is
    one reduction (a NaN or an infinity anywhere makes it non-finite, and so does an
    overflow, which the running totals would reach too)."""
    total = float(values.sum())
    if total - total != 0.0:  # NaN or +-inf; cheaper than math.isfinite on a numpy float
        raise NonFiniteUpdate(f"{name}: not finite for this update (an output or a target "
                              "too large for the arithmetic)")


def as_finite_array(value: object, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return ``value`` as a float64 array, checking shape and finiteness.

    ``shape`` may contain ``-1`` for a free dimension.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: not numeric ({error})") from None
    if shape is not None and (array.ndim != len(shape) or any(
            want not in (-1, got) for want, got in zip(shape, array.shape, strict=True))):
        wanted = "(" + ", ".join("n" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {wanted}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "inf"
        raise ValueError(f"{name}: contains {bad}")
    return array


def check_probabilities(value: object, name: str, n_classes: int) -> np.ndarray:
    """Validate one probability vector of length ``n_classes``; return it renormalised."""
    p = as_finite_array(value, name, (n_classes,))
    _check_simplex(p, name, axis=None)
    return p / p.sum()


#: A quick look clears a vector only when its sum is this much inside the tolerance: the
#: left-to-right sum below and numpy's may differ by a few units in the last place (about
#: 1e-15 for a handful of classes), so a vector whose sum sits at the edge goes through
#: ``check_probabilities``, which decides.
_QUICK_SUM_MARGIN = 1e-12
_FLOAT64 = np.dtype(np.float64)


def check_probability_vector(value: object, name: str, n_classes: int) -> list[float]:
    """Fast path of :func:`check_probabilities` for one small vector, as Python floats.

    For the per-event verbs, where numpy's per-call overhead is most of the cost. It
    accepts and rejects exactly what ``check_probabilities`` does, with the same
    messages: a list, tuple or float64 array of ``n_classes`` plain numbers that are
    finite, in range and sum to 1 well inside the tolerance is cleared here; anything
    else (another type, a bad entry, a sum near the edge) goes through
    ``check_probabilities``, which raises or accepts. The result is renormalised by the
    sum taken left to right, ``p_k / (((p_0 + p_1) + p_2) + ...)``; for two classes that
    is bit for bit what ``check_probabilities`` returns, for more it may differ in the
    last place, so a batch path that must match this one sums its columns in the same
    order.
    """
    kind = type(value)
    items: list[float] | None = None
    if kind is np.ndarray:
        if value.dtype is _FLOAT64 and value.shape == (n_classes,):
            items = value.tolist()
    elif (kind is list or kind is tuple) and len(value) == n_classes:
        items = list(value)
        for index, item in enumerate(items):
            if type(item) is not float:
                if type(item) is int or type(item) is np.float64:
                    items[index] = float(item)
                else:
                    items = None
                    break
    if items is not None:
        total = 0.0
        high = 1.0 + PROBABILITY_TOLERANCE
        for item in items:
            if not 0.0 <= item <= high:  # also false for NaN; inf is above ``high``
                items = None
                break
            total += item
        if items is not None and abs(total - 1.0) <= PROBABILITY_TOLERANCE - _QUICK_SUM_MARGIN:
            return [item / total for item in items]
    check_probabilities(value, name, n_classes)  # raises with the usual message
    items = np.asarray(value, dtype=np.float64).tolist()
    total = 0.0
    for item in items:
        total += item
    return [item / total for item in items]


def check_probability_vector_rows(value: object, name: str, n_classes: int) -> np.ndarray:
    """Fast path of ``check_probability_rows(value, name, -1, n_classes)`` for a batch.

    Accepts and rejects exactly what ``check_probability_rows`` does, with the same
    messages: a float array whose entries lie in ``[0, 1]`` (which also rules out NaN and
    inf) and whose row sums are well inside the tolerance is cleared with a few numpy
    reductions; anything else goes through ``check_probability_rows``, which decides.
    Rows are renormalised by their sum taken left to right, as in
    :func:`check_probability_vector`, so row ``i`` equals
    ``check_probability_vector(value[i], ...)`` bit for bit (and, for two classes,
    ``check_probability_rows`` too).
    """
    try:
        p = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        p = None
    if (p is not None and p.ndim == 2 and p.shape[1] == n_classes and p.size
            and p.min() >= 0.0 and p.max() <= 1.0 + PROBABILITY_TOLERANCE):
        total = _row_sums(p)
        limit = PROBABILITY_TOLERANCE - _QUICK_SUM_MARGIN
        if total.min() >= 1.0 - limit and total.max() <= 1.0 + limit:
            return p / total[:, None]
    check_probability_rows(value, name, -1, n_classes)  # raises with the usual message
    p = np.asarray(value, dtype=np.float64)
    return p / _row_sums(p)[:, None] if p.size else p.copy()


def _row_sums(p: np.ndarray) -> np.ndarray:
    """Sum of each row of a 2-d array, taken left to right."""
    total = p[:, 0].copy()
    for column in range(1, p.shape[1]):
        total += p[:, column]
    return total


def check_probability_rows(value: object, name: str, n_rows: int, n_classes: int) -> np.ndarray:
    """Validate a ``(n_rows, n_classes)`` array whose rows are probability vectors."""
    p = as_finite_array(value, name, (n_rows, n_classes))
    _check_simplex(p, name, axis=1)
    return p / p.sum(axis=-1, keepdims=True)


def _check_simplex(p: np.ndarray, name: str, axis: int | None) -> None:
    if p.size and (p.min() < 0.0 or p.max() > 1.0 + PROBABILITY_TOLERANCE):
        raise ValueError(f"{name}: probabilities must lie in [0, 1], got min {p.min():.6g}, "
                         f"max {p.max():.6g}")
    total = p.sum(axis=-1) if axis is not None else p.sum()
    worst = float(np.max(np.abs(np.asarray(total) - 1.0))) if p.size else 0.0
    if worst > PROBABILITY_TOLERANCE:
        raise ValueError(f"{name}: probabilities must sum to 1 (tolerance "
                         f"{PROBABILITY_TOLERANCE}), off by {worst:.6g}")


def check_model_outputs(value: object, name: str, n_models: int,
                        n_classes: int | None) -> np.ndarray:
    """Validate one event's deployed-model outputs.

    ``(n_models, n_classes)`` probability rows for classification, ``(n_models,)``
    real values for regression (``n_classes is None``).
    """
    if n_classes is None:
        return as_finite_array(value, name, (n_models,))
    return check_probability_rows(value, name, n_models, n_classes)


def check_class_label(value: object, name: str, n_classes: int) -> int:
    """Validate a class label: an integer in ``[0, n_classes)``."""
    if isinstance(value, bool | np.bool_):
        value = int(value)
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and np.isfinite(value) and float(value).is_integer())
    if integral:
        label = int(value)
    else:
        raise ValueError(f"{name}: class label must be an integer, got {value!r}")
    if not 0 <= label < n_classes:
        raise ValueError(f"{name}: unknown class {label}, expected 0..{n_classes - 1}")
    return label


def check_target(value: object, name: str, n_outputs: int = 1) -> np.ndarray:
    """Validate a regression target: a finite number, or ``n_outputs`` of them."""
    target = as_finite_array(value, name)
    if target.size != n_outputs or target.ndim > 1:
        raise ValueError(f"{name}: expected {n_outputs} target value(s), got shape {target.shape}")
    return target.reshape(n_outputs)


def _finite_real(value: object) -> bool:
    """A finite real number, as a float. A plain float is checked without the ABC test
    (it was part of ~15% of the time to build 10,000 streams, ~65 checks each)."""
    if type(value) is float:
        return math.isfinite(value)
    if not isinstance(value, numbers.Real):
        return False
    try:  # as the float it is stored as: an int past 1.8e308 is refused, not an OverflowError
        return math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):
        return False


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a 5,000-digit
    number stays one line; past Python's digit limit for ``str`` its ``repr`` raises, so
    the integer is described instead). The config's messages and the adapters' checks
    quote values through it."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_positive(value: float, name: str) -> float:
    """Validate a strictly positive, finite hyper-parameter."""
    if not _finite_real(value) or value <= 0:
        raise ValueError(f"{name}: must be a positive finite number, got {short_repr(value)}")
    return float(value)


def check_in_range(value: float, name: str, low: float, high: float, *,
                   low_open: bool = True, high_open: bool = True) -> float:
    """Validate a hyper-parameter inside an interval (open ends by default)."""
    ok = _finite_real(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name}: must be in {left}{low:g}, {high:g}{right}, "
                         f"got {short_repr(value)}")
    return float(value)


#: The largest size or count the native core holds (its integers are 64-bit).
COUNT_MAXIMUM = 2**63 - 1


def check_count(value: int, name: str, minimum: int = 1,
                maximum: int | None = COUNT_MAXIMUM) -> int:
    """Validate an integer hyper-parameter that is at least ``minimum`` and, unless
    ``maximum`` is None (a seed Python alone reads), at most ``maximum``."""
    if type(value) is int and value >= minimum and (maximum is None or value <= maximum):
        return value  # (a plain int: the ABC checks below were ~10% of building a stream)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {short_repr(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be an integer from {minimum} to {maximum}, "
                         f"got {short_repr(value)}")
    return int(value)


def check_class_labels(values: object, name: str, n_classes: int) -> np.ndarray:
    """Validate a batch of class labels at once; return them as an int64 array."""
    items = list(values) if not isinstance(values, np.ndarray) else values
    try:
        labels = np.asarray(items)
    except (TypeError, ValueError):
        labels = np.asarray(items, dtype=object)
    if labels.ndim == 1 and labels.dtype.kind in "iub":
        array = labels.astype(np.int64)
        bad = np.flatnonzero((array < 0) | (array >= n_classes))
        if bad.size:
            index = int(bad[0])
            raise ValueError(f"{name}[{index}]: unknown class {int(array[index])}, expected "
                             f"0..{n_classes - 1}")
        return array
    return np.array([check_class_label(v, f"{name}[{i}]", n_classes)
                     for i, v in enumerate(items)], dtype=np.int64)


def check_probability_batch(xs: object, name: str, n_classes: int) -> np.ndarray:
    """A batch of probability vectors ``(n, C)`` for the ``*_many`` verbs (an empty batch
    is fine); rows renormalised exactly as :func:`check_probability_vector` does."""
    array = as_finite_array(xs, name)
    if array.shape in ((0,), (0, n_classes)):
        return array.reshape(0, n_classes)
    if array.ndim != 2:
        return check_probability_rows(array, name, -1, n_classes)  # raises: wrong shape
    return check_probability_vector_rows(array, name, n_classes)
