"""A small image classifier architecture for examples, tests and benchmarks.

``small_cnn`` is what a config's ``factory: streamweights.adapters.torch.examples:small_cnn``
builds: three 3x3 convolutions with batch normalisation, global average pooling to a
``width``-long feature vector (the penultimate features the Kalman head reads) and a
linear head. It trains in seconds on CPU on 8x8 or 28x28 grey images.
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters.torch._require import require_torch


def small_cnn(n_classes: int = 10, channels: int = 1, width: int = 32) -> Any:
    """A fresh (untrained) ``torch.nn.Sequential`` CNN; see the module docstring."""
    torch = require_torch()
    nn = torch.nn
    half = width // 2
    return nn.Sequential(
        nn.Conv2d(channels, half, 3, padding=1), nn.BatchNorm2d(half), nn.ReLU(),
        nn.Conv2d(half, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, n_classes),
    )
