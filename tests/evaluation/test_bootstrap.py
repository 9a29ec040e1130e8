"""Block bootstrap intervals and paired verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.evaluation.bootstrap import (
    block_bootstrap_means,
    compare,
    confidence_interval,
    default_block_length,
)


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=n)
    values = np.empty(n)
    values[0] = noise[0]
    for t in range(1, n):
        values[t] = phi * values[t - 1] + noise[t]
    return values


@pytest.mark.parametrize("seed", range(5))
def test_interval_contains_the_point_estimate(seed):
    rng = np.random.default_rng(seed)
    for values in (rng.exponential(0.4, 3_000), _ar1(2_000, 0.9, seed) + 1.0,
                   rng.normal(size=17)):
        low, high = confidence_interval(values, seed=seed)
        assert low <= values.mean() <= high
        assert low < high


def test_blocks_widen_the_interval_of_an_autocorrelated_series():
    """Scenario: losses follow an AR(1) with φ = 0.9, as a drifting stream's do.
    We expect: resampling blocks gives an interval at least twice as wide as resampling
    single events (the iid bootstrap's width understates the uncertainty ~4x here)."""
    values = _ar1(4_000, 0.9, seed=1)
    low, high = confidence_interval(values, seed=0)
    iid_low, iid_high = confidence_interval(values, block_length=1, seed=0)
    assert (high - low) > 2.0 * (iid_high - iid_low)


def test_rows_are_resampled_with_the_same_blocks():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=500), rng.normal(size=500)
    means = block_bootstrap_means(np.vstack([a, b]), replicates=200, seed=4)
    difference = block_bootstrap_means(a - b, replicates=200, seed=4)
    np.testing.assert_allclose(means[0] - means[1], difference, atol=1e-12)
    assert means.shape == (2, 200)


def test_replicate_means_centre_on_the_sample_mean():
    values = np.random.default_rng(5).gamma(2.0, size=1_001)
    means = block_bootstrap_means(values, replicates=4_000, seed=0)
    assert abs(means.mean() - values.mean()) < 0.01 * values.mean()


def test_verdicts():
    rng = np.random.default_rng(0)
    base = rng.exponential(0.5, 5_000)
    assert compare(base - 0.05, base + rng.normal(0, 0.01, 5_000)).verdict == "win"
    assert compare(base + 0.05, base).verdict == "loss"
    tied = compare(base + rng.normal(0, 0.2, 5_000), base)
    assert tied.verdict == "tie" and tied.low < 0 < tied.high


def test_default_block_length_and_bad_input():
    assert default_block_length(10_000) == 100
    assert default_block_length(1) == 1
    with pytest.raises(ValueError, match="values"):
        block_bootstrap_means(np.array([]))
