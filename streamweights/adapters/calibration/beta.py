"""Online beta scaling: a three-parameter recalibration of a binary model's probability.

A thin handle: validation here, the state and the per-event arithmetic in the native core
(``native/src/beta.rs``); the numpy version it replaced is the test oracle
(``tests/reference/beta.py``).
"""

from __future__ import annotations

from streamweights import _native
from streamweights.adapters.calibration._newton import _BinaryNewtonCalibrator


class OnlineBetaScaling(_BinaryNewtonCalibrator):
    """Online beta scaling (OBS): ``q = sigmoid(a * ln f + b * ln(1 - f) + c)``, online.

    Platt scaling treats a model's errors near 0 and near 1 alike (it maps ``logit f``,
    which weighs ``ln f`` and ``ln(1 - f)`` equally, ``b = -a``). Beta calibration
    (Kull et al. 2017) frees the two weights, so it can fix a model that is over-confident
    on one side and fine on the other. Fitted by Online Newton Step exactly like
    :class:`~streamweights.adapters.calibration.OnlinePlatt`, with ``D = 2`` in the
    authors' constants (Gupta & Ramdas 2023). Input and output are probability vectors of
    shape ``(2,)``; ``f`` is clipped to ``[1e-5, 1 - 1e-5]`` before the logs.

    Parameters
    ----------
    discount
        Memory of the curvature estimate, in ``(0, 1]``; ``1.0`` is the paper's
        algorithm, below 1 is ours (see ``OnlinePlatt``). Default ``0.9999``.
    exp_concavity
        The ONS constant ``beta`` (steps ``A^{-1} g / beta``); ``0.1`` (authors).
    initial_curvature
        ``A_0 = initial_curvature * I``; ``25 = (beta * D)^-2`` with ``D = 2`` (authors).
    radius
        ``||(a, b, c)|| <= radius`` by the generalised projection; ``100`` (authors).

    The map starts at ``(a, b, c) = (1, -1, 0)``, the identity
    (``sigmoid(ln f - ln(1 - f)) = f``); the authors' code starts at ``(0, 0, 0)``.
    ``b`` may take either sign (as in the authors' code; Kull et al. constrain it).
    ``on_drift`` resets the curvature to ``A_0`` and keeps the map.

    Example
    -------
    A model that is over-confident only about class 1, ``truth = f**2``:

    >>> import numpy as np
    >>> from streamweights.adapters import OnlineBetaScaling
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.uniform(0.05, 0.95, size=3000)
    >>> calibrator = OnlineBetaScaling()
    >>> calibrator.learn_many(np.stack([1 - scores, scores], axis=1),
    ...                       rng.random(3000) < scores**2)
    >>> calibrated = calibrator.predict_many(np.stack([1 - scores, scores], axis=1))[:, 1]
    >>> bool(np.mean(np.abs(calibrated - scores**2)) < np.mean(np.abs(scores - scores**2)) / 3)
    True

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). M. Kull, T. Silva Filho and P. Flach, "Beta calibration: a
    well-founded and easily implemented improvement on logistic calibration for binary
    classifiers", AISTATS 2017.
    """

    _dimension = 3
    _core_type = _native.BetaCore

    def __init__(self, discount: float = 0.9999, exp_concavity: float = 0.1,
                 initial_curvature: float = 25.0, radius: float = 100.0) -> None:
        super().__init__(discount, exp_concavity, initial_curvature, radius)

    @property
    def coefficients_(self) -> tuple[float, float, float]:
        """``(a, b, c)`` of ``q = sigmoid(a * ln f + b * ln(1 - f) + c)``."""
        a, b, c = self._core.theta
        return a, b, c
