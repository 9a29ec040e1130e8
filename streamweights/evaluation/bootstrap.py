"""Circular block bootstrap: confidence intervals for a stream's mean loss, and paired
verdicts (win / tie / loss) between two forecasters on the same stream.

Losses on a drifting stream are autocorrelated (a bad stretch after a change is a run of
bad events), so resampling single events would give intervals far too narrow. The
circular block bootstrap resamples whole blocks of consecutive events, wrapping around
the end so that every event is equally likely to be drawn (Politis & Romano 1992). The
block length defaults to ``ceil(sqrt(n))`` — longer than the ``n^(1/3)`` rate that is
optimal for short-memory series, deliberately: drift makes the memory long, and a longer
block only widens the interval (the conservative side for claiming a win).

Paired comparisons resample the *difference* of two forecasters' per-event losses with
one set of blocks, so the stream's hard and easy stretches cancel. A win is an interval
of the difference entirely below zero (lower loss), a loss one entirely above, a tie
anything else.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ours, theirs = rng.normal(0.30, 0.1, 5_000), rng.normal(0.35, 0.1, 5_000)
>>> compare(ours, theirs).verdict
'win'

References
----------
Politis, Romano. "A circular block-resampling procedure for stationary data." In
Exploring the Limits of Bootstrap, Wiley, 1992.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REPLICATES = 1_000
LEVEL = 0.95


def default_block_length(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def block_bootstrap_means(values: np.ndarray, block_length: int | None = None,
                          replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of the mean of each row of ``values`` (``(n,)`` or ``(m, n)``;
    rows are resampled with the same blocks, i.e. paired). Returns ``(replicates,)`` or
    ``(m, replicates)``."""
    array = np.asarray(values, dtype=np.float64)
    single = array.ndim == 1
    rows = array[None, :] if single else array
    n = rows.shape[1]
    if n == 0:
        raise ValueError("values: need at least one value to bootstrap")
    length = min(block_length or default_block_length(n), n)
    n_blocks = math.ceil(n / length)
    last = n - (n_blocks - 1) * length  # the final block is cut so a replicate has n values
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(replicates, n_blocks))
    # sums of a block starting at s: prefix[s + L] - prefix[s] over the series twice over
    prefix = np.zeros((rows.shape[0], 2 * n + 1))
    np.cumsum(np.concatenate([rows, rows], axis=1), axis=1, out=prefix[:, 1:])
    full = prefix[:, starts[:, :-1] + length] - prefix[:, starts[:, :-1]]
    tail = prefix[:, starts[:, -1] + last] - prefix[:, starts[:, -1]]
    means = (full.sum(axis=2) + tail) / n
    return means[0] if single else means


def confidence_interval(values: np.ndarray, level: float = LEVEL,
                        block_length: int | None = None, replicates: int = REPLICATES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` by the circular block bootstrap."""
    means = block_bootstrap_means(values, block_length, replicates, seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """Mean loss difference ``ours - reference`` with its interval, and the verdict."""

    difference: float
    low: float
    high: float
    verdict: str  # "win", "tie" or "loss" (from ours' side)


def compare(ours: np.ndarray, reference: np.ndarray, level: float = LEVEL,
            block_length: int | None = None, replicates: int = REPLICATES,
            seed: int = 0) -> Comparison:
    """Paired block-bootstrap verdict on per-event losses (lower is better)."""
    difference = np.asarray(ours, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    low, high = confidence_interval(difference, level, block_length, replicates, seed)
    verdict = "win" if high < 0.0 else "loss" if low > 0.0 else "tie"
    return Comparison(float(difference.mean()), low, high, verdict)
