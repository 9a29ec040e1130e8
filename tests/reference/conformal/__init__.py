"""Reference oracle (plain Python, not a product path): the implementation the native
core replaced, kept to check it against (tests/test_native_conformal.py).

Online conformal prediction: sets and intervals whose coverage holds under drift.

A conformal layer sits after the chain. For every served prediction it gives, per
miscoverage level ``alpha``, a set of classes (classification) or an interval
(regression) meant to contain the label with probability ``1 - alpha``. Labels arrive
late; each one tells the layer whether the set served for it covered it, and the layer
moves its thresholds so that the long-run share of misses converges to ``alpha`` — with
no assumption on how the data drift.

* :class:`AdaptiveConformal` — ACI (Gibbs & Candès 2021), one step size;
* :class:`ConformalPID` — quantile tracking with an integral term (Angelopoulos, Candès
  & Tibshirani 2023);
* :class:`DtACI` — several ACI step sizes mixed by exponential weights (Gibbs & Candès
  2022), the default;
* :mod:`.scores` — the nonconformity scores and the window of recent scores.
"""

from typing import Any

from tests.reference.conformal._layer import _ConformalLayer, level_key
from tests.reference.conformal.aci import AdaptiveConformal
from tests.reference.conformal.dtaci import DtACI
from tests.reference.conformal.pid import ConformalPID

#: ``conformal.method`` in a stream's config -> the layer class.
METHODS = {"aci": AdaptiveConformal, "pid": ConformalPID, "dtaci": DtACI}

__all__ = ["METHODS", "AdaptiveConformal", "ConformalPID", "DtACI", "build_layer",
           "check_conformal_config", "level_key"]


def check_conformal_config(block: Any, path: str, n_classes: int | None) -> dict[str, Any]:
    """Validate a stream's ``conformal:`` block and return it normalised:
    ``{"alpha": [levels], "method": name, "compare_raw": bool, **options}`` (``alpha``
    may be given as one number; ``compare_raw``, default true, also runs a layer on each
    deployed model's output, for the raw-vs-adapted metrics, at about twice the cost).
    ``n_classes`` is ``None`` for a regression stream. Raises ``ValueError`` naming the
    key under ``path``."""
    if not isinstance(block, dict):
        raise ValueError(f"{path}: expected a mapping like {{alpha: [0.1, 0.05], "
                         f"method: dtaci}}, got {type(block).__name__}")
    options = dict(block)
    alpha = options.pop("alpha", [0.1, 0.05])
    alphas = [alpha] if isinstance(alpha, int | float) and not isinstance(alpha, bool) \
        else alpha
    method = options.pop("method", "dtaci")
    compare_raw = options.pop("compare_raw", True)
    if not isinstance(compare_raw, bool):
        raise ValueError(f"{path}.compare_raw: must be true or false, got {compare_raw!r}")
    if method not in METHODS:
        raise ValueError(f"{path}.method: must be one of {', '.join(METHODS)}, got {method!r}")
    normalised = {"alpha": alphas, "method": method, "compare_raw": compare_raw, **options}
    try:
        build_layer(normalised, n_classes)
    except TypeError as error:
        raise ValueError(f"{path}: {error} (options of method {method!r}: see "
                         f"{METHODS[method].__name__})") from None
    except ValueError as error:
        message = str(error)
        if message.startswith("alphas"):
            message = "alpha" + message[len("alphas"):]
        raise ValueError(f"{path}.{message}") from None
    return normalised


def build_layer(config: dict[str, Any], n_classes: int | None) -> _ConformalLayer:
    """A fresh layer from a normalised ``conformal:`` block."""
    options = {k: v for k, v in config.items() if k not in ("alpha", "method", "compare_raw")}
    return METHODS[config["method"]](alphas=config["alpha"], n_classes=n_classes, **options)
