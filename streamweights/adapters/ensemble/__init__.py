"""Ensembles: mix the outputs of K deployed models, trusting most the ones that do well.

An expert here is one deployed model; each event it gives a probability vector (or a
number, for regression) and, when the label arrives, a loss. ``Hedge`` keeps a weight
per model that decays exponentially with its cumulative loss, so the mixture does
almost as well as the best single model in hindsight. ``FixedShare`` keeps a little
weight on every model, so when another model becomes the best it takes over quickly.
``OnlineStacking`` lets the weights be any real numbers, tracked by a Kalman filter.
"""

from streamweights.adapters.ensemble.fixed_share import FixedShare
from streamweights.adapters.ensemble.hedge import Hedge
from streamweights.adapters.ensemble.stacking import OnlineStacking

__all__ = ["FixedShare", "Hedge", "OnlineStacking"]
