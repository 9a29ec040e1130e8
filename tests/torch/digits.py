"""Real images for the torch tests and benchmark: scikit-learn's bundled digits.

``load_digits`` reads 1,797 8x8 grey images of handwritten digits shipped inside the
scikit-learn package (no download). This module splits them, trains the example CNN on
the training half in a few seconds, corrupts the held-out half (Gaussian noise, blur,
contrast, pixel dropout, shift; severities 1-5) and orders a stream class-correlated
by a Dirichlet partition as in RoTTA's practical TTA setting. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import torch

from streamweights.adapters.torch.examples import small_cnn

CORRUPTIONS = ("gaussian_noise", "blur", "contrast", "pixel_dropout", "shift")
N_CLASSES = 10


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)``: images ``(n, 1, 8, 8)`` in [0, 1], half and
    half, stratified by class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(N_CLASSES):
        indices = rng.permutation(np.flatnonzero(labels == label))
        train.extend(indices[: len(indices) // 2])
        test.extend(indices[len(indices) // 2:])
    train, test = np.sort(train), np.sort(test)
    return images[train], labels[train], images[test], labels[test]


def train_model(images: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 30,
                n_classes: int = N_CLASSES) -> torch.nn.Module:
    """The example CNN trained on clean images (Adam, cross-entropy); eval mode."""
    torch.manual_seed(seed)
    model = small_cnn(n_classes=n_classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    return model.eval()


def corrupt(images: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
    """A corrupted copy of ``images`` (values clipped to [0, 1])."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity: must be in 1..5, got {severity}")
    rng = np.random.default_rng(seed)
    level = severity - 1
    x = images.astype(np.float64)
    if kind == "gaussian_noise":
        x = x + rng.normal(0.0, (0.15, 0.25, 0.35, 0.45, 0.55)[level], size=x.shape)
    elif kind == "blur":
        x = _blur(x, (0.6, 0.8, 1.0, 1.2, 1.4)[level])
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * (0.4, 0.3, 0.2, 0.15, 0.1)[level] + mean
    elif kind == "pixel_dropout":
        x = x * (rng.random(x.shape) >= (0.2, 0.3, 0.4, 0.5, 0.6)[level])
    elif kind == "shift":
        x = _shift(x, (1, 1, 2, 2, 3)[level], rng)
    else:
        raise ValueError(f"kind: unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = 2
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="edge")
    rows = sum(k * padded[:, :, radius + o: radius + o + x.shape[2], :]
               for k, o in zip(kernel, offsets, strict=True))
    return sum(k * rows[:, :, :, radius + o: radius + o + x.shape[3]]
               for k, o in zip(kernel, offsets, strict=True))


def _shift(x: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(x)
    size = x.shape[2]
    for index in range(len(x)):
        dy, dx = rng.integers(-pixels, pixels + 1, size=2)
        source = x[index, 0, max(0, -dy): size - max(0, dy), max(0, -dx): size - max(0, dx)]
        out[index, 0, max(0, dy): max(0, dy) + source.shape[0],
            max(0, dx): max(0, dx) + source.shape[1]] = source
    return out


def class_correlated_order(labels: np.ndarray, seed: int, concentration: float = 0.1,
                           n_slots: int | None = None) -> np.ndarray:
    """Indices of ``labels`` in a class-correlated order: each class is split over
    ``n_slots`` time slots by Dirichlet(concentration) proportions and each slot lists its
    classes one block after another (RoTTA's practical TTA sampling, γ = 0.1)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    n_slots = n_slots or len(classes)
    slots: list[list[np.ndarray]] = [[] for _ in range(n_slots)]
    for label in classes:
        indices = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(n_slots, concentration))
        cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(int)
        for slot, part in enumerate(np.split(indices, cuts)):
            slots[slot].append(part)
    order = [np.concatenate(parts) for parts in slots]
    return np.concatenate(order)


def corrupted_stream(images: np.ndarray, labels: np.ndarray, kind: str,
                     severities: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images under ``kind`` at each severity in turn (a gradual change),
    each pass in its own class-correlated order."""
    xs, ys = [], []
    for offset, severity in enumerate(severities):
        order = class_correlated_order(labels, seed + 1000 * offset)
        xs.append(corrupt(images[order], kind, severity, seed + 7 * offset + 1))
        ys.append(labels[order])
    return np.concatenate(xs), np.concatenate(ys)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def sensor_change(images: np.ndarray, kind: str, noise: float, seed: int) -> np.ndarray:
    """A new sensor with strong noise on top: ``"gain"`` (0.3·x + 0.4: a washed-out,
    brighter sensor), ``"blur"`` (softer optics, σ = 1.2) or ``"invert"`` (1 - x: dark
    strokes on a bright background, a sensor whose polarity flipped), then Gaussian noise
    of standard deviation ``noise``; clipped to [0, 1]."""
    x = images.astype(np.float64)
    if kind == "gain":
        x = 0.3 * x + 0.4
    elif kind == "blur":
        x = _blur(x, 1.2)
    elif kind == "invert":
        x = 1.0 - x
    else:
        raise ValueError(f"kind: 'gain', 'blur' or 'invert', got {kind!r}")
    x = x + np.random.default_rng(seed).normal(0.0, noise, size=x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def sensor_stream(images: np.ndarray, labels: np.ndarray, kind: str, seed: int = 0,
                  noise: float = 0.35, passes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The images ``passes`` times through :func:`sensor_change`, each pass in its own
    class-correlated order (order seed ``7 + pass + seed``, noise seed ``11 + pass +
    seed``): the near-chance streams of issue 14 (2,703 held-out digits)."""
    xs, ys = [], []
    for rep in range(passes):
        order = class_correlated_order(labels, 7 + rep + seed)
        xs.append(sensor_change(images[order], kind, noise, seed=11 + rep + seed))
        ys.append(labels[order])
    return np.concatenate(xs), np.concatenate(ys)


def hindsight_batch_norm(model: torch.nn.Module, images: np.ndarray) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are those of all of ``images`` at once
    (AdaBN on the whole stream, in hindsight): the reference a label-free adapter of the
    normalisation statistics can at best reach."""
    import copy

    adapted = copy.deepcopy(model)
    for module in adapted.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0  # running statistics := this batch's
    adapted.train()
    with torch.no_grad():
        adapted(torch.from_numpy(images))
    return adapted.eval()
