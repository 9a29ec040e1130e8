"""Online Platt scaling: recalibrate a binary model's probability with two numbers.

A thin handle: validation here, the state and the per-event arithmetic in the native core
(``native/src/platt.rs``); the numpy version it replaced is the test oracle
(``tests/reference/platt.py``).
"""

from __future__ import annotations

from streamweights import _native
from streamweights.adapters.calibration._newton import _BinaryNewtonCalibrator


class OnlinePlatt(_BinaryNewtonCalibrator):
    """Online Platt scaling (OPS): ``q = sigmoid(a * logit(f) + b)``, fitted online.

    A binary model's probability ``f`` for class 1 becomes ``q`` through a logistic map
    of its logit: ``a > 1`` sharpens an under-confident model, ``a < 1`` softens an
    over-confident one, ``b`` shifts the base rate. The two numbers are fitted by online
    logistic regression with Online Newton Step (ONS) as in Gupta & Ramdas (2023):
    logarithmic regret against the best fixed Platt map in hindsight, no step size to
    tune. Input and output are probability vectors of shape ``(2,)``; ``f`` is clipped
    to ``[1e-5, 1 - 1e-5]`` before the logit and ``a * logit(f) + b`` to ``+-100``
    (authors' code).

    Parameters
    ----------
    discount
        Memory of the curvature estimate, in ``(0, 1]``. ``1.0`` is the paper's algorithm
        exactly: ONS never forgets, its steps shrink like ``1/t``, and after a long stable
        period a change of the model's mis-calibration takes very long to undo. Below 1
        [ours], old curvature fades towards ``A_0`` with a memory of about
        ``1 / (1 - discount)`` events, so the steps stop shrinking and the map keeps
        tracking drift. The default ``0.9999`` (memory ~10,000 events) is tuned on our
        drift tests. algorithms.md suggests ``0.999``, but the ONS step is
        ``A^{-1} g / beta`` with ``1 / beta = 10``, about a Newton step of relative size
        ``10 * (1 - discount)``: on a calibrated model, at ``0.999`` the coefficients
        jitter with a standard deviation of ~0.13 for ever; at ``0.9999`` of ~0.04, less
        than the paper's algorithm still has after 5,000 events (~0.07).
    exp_concavity
        The ONS constant ``beta``: steps are ``A^{-1} g / beta``. ``0.1`` as in the
        authors' code, for all data sets.
    initial_curvature
        ``A_0 = initial_curvature * I``; ``100 = (beta * D)^-2`` with ``D = 1`` (authors).
    radius
        ``||(a, b)|| <= radius``, enforced by the generalised (A-norm) projection; ``100``.

    The map starts at ``(a, b) = (1, 0)``, the identity: the base model's probabilities
    are served unchanged until labels say otherwise (the authors' code starts at
    ``(0, 0)``, a first forecast of 0.5). ``on_drift`` resets the curvature to ``A_0``
    and keeps ``(a, b)``, so the next steps are as large as the first ones.

    Example
    -------
    An under-confident model whose true probability is ``sigmoid(2 * logit(f))``:

    >>> import numpy as np
    >>> from streamweights.adapters import OnlinePlatt
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.uniform(0.05, 0.95, size=3000)
    >>> truth = scores**2 / (scores**2 + (1 - scores) ** 2)
    >>> calibrator = OnlinePlatt()
    >>> calibrator.learn_many(np.stack([1 - scores, scores], axis=1), rng.random(3000) < truth)
    >>> a, b = calibrator.coefficients_
    >>> bool(1.6 < a < 2.4 and abs(b) < 0.3)
    True

    References
    ----------
    C. Gupta and A. Ramdas, "Online Platt Scaling with Calibeating", ICML 2023
    (arXiv:2305.00070). E. Hazan, A. Agarwal and S. Kale, "Logarithmic regret algorithms
    for online convex optimization", Machine Learning 69, 2007 (Online Newton Step).
    """

    _dimension = 2
    _core_type = _native.PlattCore

    def __init__(self, discount: float = 0.9999, exp_concavity: float = 0.1,
                 initial_curvature: float = 100.0, radius: float = 100.0) -> None:
        super().__init__(discount, exp_concavity, initial_curvature, radius)

    @property
    def coefficients_(self) -> tuple[float, float]:
        """``(a, b)`` of ``q = sigmoid(a * logit(f) + b)``."""
        a, b = self._core.theta
        return a, b
