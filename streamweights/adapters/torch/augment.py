"""Random input perturbations for the student of test-time adaptation.

RoTTA trains its student on strongly augmented copies of the memory (colour jitter,
small affine moves, blur, noise) so that it must agree with the teacher on views the
teacher never saw. Colour and geometry depend on the data; this module applies what is
safe for any image-like tensor ``(N, C, H, W)`` — contrast and brightness jitter, a shift
of up to ``max_shift`` pixels with edge padding, and small Gaussian noise, all scaled by
each input's own spread so the units of the input do not matter — and, for other ranks,
the contrast jitter and noise alone. Draws come from an explicit ``torch.Generator`` so a
run is reproducible and its state can be snapshotted.
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters.torch._require import require_torch

CONTRAST_RANGE = (0.7, 1.3)
BRIGHTNESS_FRACTION = 0.2   # shift of up to ±0.2 of the input's standard deviation
NOISE_FRACTION = 0.05       # noise at 5 % of the input's standard deviation
MAX_SHIFT = 1               # pixels


def strong_augment(x: Any, generator: Any, max_shift: int = MAX_SHIFT) -> Any:
    """A perturbed copy of the batch ``x`` (``N`` leading), drawn from ``generator``."""
    torch = require_torch()
    n = x.shape[0]
    axes = tuple(range(1, x.dim()))
    shape = (n,) + (1,) * (x.dim() - 1)
    mean = x.mean(dim=axes, keepdim=True)
    spread = x.std(dim=axes, keepdim=True).clamp_min(1e-6)
    low, high = CONTRAST_RANGE
    contrast = low + (high - low) * torch.rand(shape, generator=generator)
    brightness = (2.0 * torch.rand(shape, generator=generator) - 1.0) * BRIGHTNESS_FRACTION
    out = (x - mean) * contrast + mean + brightness * spread
    if x.dim() == 4 and max_shift > 0:
        out = _shift(out, generator, max_shift)
    noise = torch.randn(x.shape, generator=generator) * (NOISE_FRACTION * spread)
    return out + noise


def _shift(x: Any, generator: Any, max_shift: int) -> Any:
    """Translate each image by a random whole number of pixels, padding with its edge."""
    torch = require_torch()
    n, _, height, width = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = [padded[i, :, int(dy):int(dy) + height, int(dx):int(dx) + width]
            for i, (dy, dx) in enumerate(offsets.tolist())]
    return torch.stack(rows)
