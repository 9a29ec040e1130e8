"""Shared, seeded set-up of the torch tests: one small CNN trained on real digits."""

from __future__ import annotations

import pytest
import torch

from tests.torch import digits


@pytest.fixture(scope="session", autouse=True)
def _deterministic_cpu():
    """Two threads at most (the CI machine is shared) and deterministic kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digit_split():
    """``(train_x, train_y, test_x, test_y)`` of scikit-learn's bundled digits."""
    return digits.load_split(seed=0)


@pytest.fixture(scope="session")
def digit_model(digit_split, _deterministic_cpu):
    """The example CNN trained on the clean training half (about 2 s on one core)."""
    train_x, train_y, _, _ = digit_split
    return digits.train_model(train_x, train_y, seed=0)
