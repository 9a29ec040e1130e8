"""streamweights: keep deployed ML models adapted online while the world drifts.

The public API is the adapters (pure online algorithms on numpy) and their state codec;
the service layers build on them.
"""

from streamweights.adapters import (
    Adapter,
    Calibeating,
    Chain,
    DriftMemory,
    FixedShare,
    Hedge,
    KalmanWeights,
    OnlineBetaScaling,
    OnlinePlatt,
    OnlineStacking,
    OnlineTemperature,
    PriorShift,
    build_adapter,
    decode_state,
    encode_state,
    restore_adapter,
)

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Calibeating",
    "Chain",
    "DriftMemory",
    "FixedShare",
    "Hedge",
    "KalmanWeights",
    "OnlineBetaScaling",
    "OnlinePlatt",
    "OnlineStacking",
    "OnlineTemperature",
    "PriorShift",
    "__version__",
    "build_adapter",
    "decode_state",
    "encode_state",
    "restore_adapter",
]
