"""A small class-balanced memory of recent, confident test inputs for test-time adaptation.

RoTTA's category-balanced sampling with timeliness and uncertainty (CSTU, Yuan et al.,
CVPR 2023): a fixed number of slots split evenly over the classes (by pseudo-label);
every item scores ``λ_t·sigmoid(age / capacity) + λ_u·uncertainty / ln C``, and when a
class is at its quota (or the memory is full) the new item replaces the highest-scoring
(oldest, least certain) item of its class, or of a majority class, if that item scores
higher than the newcomer. The memory a stream keeps is therefore balanced over classes
even when the stream shows one class for a long while, which is what keeps adaptation
from drifting toward the current class.

Which inputs may enter is decided by the caller (STAMP's stable filter: low entropy and
a pseudo-label the un-adapted model agrees with); this class only keeps the balance.
Pure numpy and Python; the state round-trips bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BalancedMemory:
    """Class-balanced memory (see the module docstring).

    Parameters
    ----------
    capacity
        Number of slots (RoTTA: 64).
    n_classes
        Number of pseudo-label classes; each gets ``capacity / n_classes`` slots.
    timeliness_weight, uncertainty_weight
        ``λ_t`` and ``λ_u`` of the item score (RoTTA: 1 and 1).
    """

    def __init__(self, capacity: int, n_classes: int, timeliness_weight: float = 1.0,
                 uncertainty_weight: float = 1.0) -> None:
        if capacity < 1:
            raise ValueError(f"memory_size: must be >= 1, got {capacity}")
        self.capacity = capacity
        self.n_classes = n_classes
        self.timeliness_weight = timeliness_weight
        self.uncertainty_weight = uncertainty_weight
        self._quota = capacity / n_classes
        self._log_classes = math.log(n_classes)
        self._inputs: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
        self._uncertainties: list[list[float]] = [[] for _ in range(n_classes)]
        self._ages: list[list[int]] = [[] for _ in range(n_classes)]

    def __len__(self) -> int:
        return sum(len(items) for items in self._ages)

    def class_counts(self) -> list[int]:
        """Items held per class."""
        return [len(items) for items in self._ages]

    def _score(self, age: int, uncertainty: float) -> float:
        timeliness = 1.0 / (1.0 + math.exp(-age / self.capacity))
        return (self.timeliness_weight * timeliness
                + self.uncertainty_weight * uncertainty / self._log_classes)

    def add(self, x: np.ndarray, label: int, uncertainty: float) -> bool:
        """Offer one input with its pseudo-label and uncertainty (entropy); every stored
        item ages by one whether or not it is accepted. Returns whether it was stored."""
        new_score = self._score(0, uncertainty)
        if len(self._ages[label]) < self._quota:
            accepted = len(self) < self.capacity or self._evict(self._majority_classes(),
                                                                  new_score)
        else:
            accepted = self._evict([label], new_score)
        self.add_time()
        if accepted:
            self._inputs[label].append(np.array(x, dtype=np.float32, copy=True))
            self._uncertainties[label].append(float(uncertainty))
            self._ages[label].append(0)
        return accepted

    def add_time(self) -> None:
        """One input went by (offered or filtered out): every stored item ages by one."""
        for ages in self._ages:
            for index in range(len(ages)):
                ages[index] += 1

    def _majority_classes(self) -> list[int]:
        counts = self.class_counts()
        most = max(counts)
        return [c for c, count in enumerate(counts) if count == most]

    def _evict(self, classes: list[int], new_score: float) -> bool:
        """Remove the highest-scoring item of ``classes`` if it outscores the newcomer."""
        best: tuple[float, int, int] | None = None
        for label in classes:
            for index, (age, uncertainty) in enumerate(zip(self._ages[label],
                                                           self._uncertainties[label],
                                                           strict=True)):
                score = self._score(age, uncertainty)
                if best is None or score > best[0]:
                    best = (score, label, index)
        if best is None or best[0] <= new_score:
            return False
        _, label, index = best
        del self._inputs[label][index]
        del self._uncertainties[label][index]
        del self._ages[label][index]
        return True

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(inputs, pseudo_labels, ages)`` of every stored item, class by class."""
        inputs = [x for per_class in self._inputs for x in per_class]
        labels = [c for c, per_class in enumerate(self._ages) for _ in per_class]
        ages = [a for per_class in self._ages for a in per_class]
        if not inputs:
            return np.empty((0,), dtype=np.float32), np.empty(0, np.int64), np.empty(0)
        return (np.stack(inputs), np.array(labels, dtype=np.int64),
                np.array(ages, dtype=np.float64))

    def evict_older_than(self, max_age: int) -> None:
        """Forget items older than ``max_age`` (a drift alarm: pre-change memories)."""
        for label in range(self.n_classes):
            keep = [i for i, age in enumerate(self._ages[label]) if age <= max_age]
            self._inputs[label] = [self._inputs[label][i] for i in keep]
            self._uncertainties[label] = [self._uncertainties[label][i] for i in keep]
            self._ages[label] = [self._ages[label][i] for i in keep]

    def state_dict(self) -> dict[str, Any]:
        inputs, labels, ages = self.items()
        uncertainties = [u for per_class in self._uncertainties for u in per_class]
        return {"inputs": inputs, "labels": labels, "ages": ages.astype(np.int64),
                "uncertainties": np.array(uncertainties, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inputs = [[] for _ in range(self.n_classes)]
        self._uncertainties = [[] for _ in range(self.n_classes)]
        self._ages = [[] for _ in range(self.n_classes)]
        labels = np.asarray(state["labels"], dtype=np.int64)
        for index, label in enumerate(labels.tolist()):
            self._inputs[label].append(np.asarray(state["inputs"][index], dtype=np.float32))
            self._uncertainties[label].append(float(state["uncertainties"][index]))
            self._ages[label].append(int(state["ages"][index]))
