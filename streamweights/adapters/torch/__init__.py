"""Adapting a deployed torch model's own weights, on CPU, with torch as an optional extra.

The rest of :mod:`streamweights.adapters` re-weights what deployed models *say*. When the
service is also given the model and its inputs, it can adapt what the model *is*:

* :class:`TestTimeAdapter` — label-free test-time adaptation (RoTTA's robust statistics,
  balanced memory and teacher-student pair; STAMP's stable memory filter, self-weighted
  entropy and outlier score);
* :class:`KalmanHead` — when labels arrive, the final linear layer tracked by
  :class:`~streamweights.adapters.KalmanWeights` over the model's penultimate features,
  optionally served as an EMA of weights;
* :func:`load_model` — a TorchScript file, or a factory plus a state dict;
* :func:`encode_weights` / :func:`decode_weights` — a version of the adapted parameters as
  safetensors bytes with a SHA-256 digest, for the artifact store.

Nothing here imports torch until it is used: ``import streamweights`` works without it,
and using a torch feature without torch installed raises :class:`TorchMissingError`
("install streamweights[torch]").
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters.torch._require import TorchMissingError, require_torch

__all__ = [
    "KalmanHead",
    "TestTimeAdapter",
    "TorchMissingError",
    "decode_weights",
    "encode_weights",
    "load_model",
    "require_torch",
]

_LAZY = {
    "TestTimeAdapter": "streamweights.adapters.torch.test_time",
    "KalmanHead": "streamweights.adapters.torch.kalman_head",
    "load_model": "streamweights.adapters.torch.loading",
    "encode_weights": "streamweights.adapters.torch.weights_file",
    "decode_weights": "streamweights.adapters.torch.weights_file",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'streamweights.adapters.torch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
