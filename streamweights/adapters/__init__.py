"""Online adapters: pure, deterministic numpy algorithms that re-weight deployed models.

An adapter sits between what deployed models say and what the service publishes. It
sees each input at prediction time (``predict``, ``observe``) and, later, the label
(``learn``). They come in families:

* ensembles (:mod:`.ensemble`) — how much to trust each of K deployed models:
  ``Hedge``, ``FixedShare`` (tracks a best model that switches), ``OnlineStacking``;
* ``FeatureCorrection`` — a Kalman-filtered logistic head over the record's features and
  the models' logits that corrects the chain's probabilities (needs ``features``);
* ``KalmanWeights`` — a linear head whose weights drift, tracked by a Kalman filter
  that learns how fast to forget;
* calibrators (:mod:`.calibration`) — how far to trust the probabilities:
  ``OnlinePlatt``, ``OnlineBetaScaling``, ``Calibeating``, ``OnlineTemperature``;
* ``PriorShift`` — the class mix has moved; re-estimate it without labels;
* ``DriftMemory`` — a small class-balanced memory of recent, informative examples and a
  river drift detector on the loss stream;
* ``Chain`` — stages in sequence, each learning on what it saw;
* ``Portfolio`` — several candidate chains side by side, served as an online Fixed-Share
  mixture with a regret bound against the best of them (the default of a stream);
* online conformal layers (:mod:`.conformal`) — prediction sets / intervals whose
  coverage holds under drift: ``AdaptiveConformal``, ``ConformalPID``, ``DtACI``;
* ``ConfidenceEstimate`` — accuracy, Brier and log-loss estimated before labels arrive.

All share the contract of :mod:`.base`; states encode to JSON with :mod:`.state_codec`.
"""

from streamweights.adapters.base import Adapter, adapter_spec, build_adapter, restore_adapter
from streamweights.adapters.calibration import (
    Calibeating,
    OnlineBetaScaling,
    OnlinePlatt,
    OnlineTemperature,
)
from streamweights.adapters.chain import Chain
from streamweights.adapters.conformal import AdaptiveConformal, ConformalPID, DtACI
from streamweights.adapters.drift_memory import DriftMemory
from streamweights.adapters.ensemble import FixedShare, Hedge, OnlineStacking
from streamweights.adapters.feature_correction import FeatureCorrection
from streamweights.adapters.kalman import KalmanWeights
from streamweights.adapters.performance_estimate import ConfidenceEstimate
from streamweights.adapters.portfolio import Portfolio
from streamweights.adapters.prior_shift import PriorShift
from streamweights.adapters.state_codec import (
    decode_state,
    dumps_state,
    encode_state,
    loads_state,
)
from streamweights.adapters.validation import PROBABILITY_TOLERANCE

__all__ = [
    "PROBABILITY_TOLERANCE",
    "Adapter",
    "AdaptiveConformal",
    "Calibeating",
    "Chain",
    "ConfidenceEstimate",
    "ConformalPID",
    "DriftMemory",
    "DtACI",
    "FeatureCorrection",
    "FixedShare",
    "Hedge",
    "KalmanWeights",
    "OnlineBetaScaling",
    "OnlinePlatt",
    "OnlineStacking",
    "OnlineTemperature",
    "Portfolio",
    "PriorShift",
    "adapter_spec",
    "build_adapter",
    "decode_state",
    "dumps_state",
    "encode_state",
    "loads_state",
    "restore_adapter",
]
