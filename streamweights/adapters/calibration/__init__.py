"""Calibrators: make predicted probabilities mean what they say, online.

A forecaster is calibrated when, among the events it gave probability 0.7, the event
happens 70% of the time. Deployed models drift out of calibration; these adapters map
their probabilities through a small model fitted online from delayed labels.
``OnlinePlatt`` (2 parameters) and ``OnlineBetaScaling`` (3) follow Gupta & Ramdas
(2023) and are fitted by Online Newton Step; ``Calibeating`` wraps either to be
calibrated even when outcomes are adversarial; ``OnlineTemperature`` is the multiclass
analogue (a temperature, optionally per-class biases).
"""

from streamweights.adapters.calibration.beta import OnlineBetaScaling
from streamweights.adapters.calibration.calibeating import Calibeating
from streamweights.adapters.calibration.platt import OnlinePlatt
from streamweights.adapters.calibration.temperature import OnlineTemperature

__all__ = ["Calibeating", "OnlineBetaScaling", "OnlinePlatt", "OnlineTemperature"]
