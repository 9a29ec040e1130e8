"""Online conformal prediction: sets and intervals whose coverage holds under drift.

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

from streamweights.adapters.conformal._layer import level_key
from streamweights.adapters.conformal.aci import AdaptiveConformal
from streamweights.adapters.conformal.dtaci import DtACI
from streamweights.adapters.conformal.pid import ConformalPID

#: ``conformal.method`` in a stream's config -> the layer class.
METHODS = {"aci": AdaptiveConformal, "pid": ConformalPID, "dtaci": DtACI}

__all__ = ["METHODS", "AdaptiveConformal", "ConformalPID", "DtACI", "level_key"]
