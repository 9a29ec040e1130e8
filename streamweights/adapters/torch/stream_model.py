"""A stream's deployed torch model: serve it from inputs, adapt it, export its weights.

What the pipeline holds for a stream that declares a ``torch:`` block. Predictions of
such a stream carry the model's *input* (``features``, flattened); the service runs the
model itself, so the model's probabilities join the other deployed models' outputs as
one more row, and the rest of the chain (ensemble, calibrators ...) is unchanged.

* ``test_time`` (options of :class:`TestTimeAdapter`): label-free adaptation on every
  prediction; the served model is the adapter's teacher.
* ``kalman_head`` (options of :class:`KalmanHead`): the final layer tracked from labels,
  over the penultimate features of the served model, which are kept with the pending
  prediction until its label arrives (learning happens on what was served).
* ``export.every_updates``: after that many adaptation steps plus labels learned, a new
  version of the adapted weights (the full state dict, with the Kalman head in place of
  the final layer) is encoded as safetensors with its digest, for the artifact store.

Deterministic: no clock, no I/O beyond loading the model at start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamweights.adapters.torch.weights_file import encode_weights

#: Keys of a stream's ``torch:`` block and of its ``export:`` sub-block.
TORCH_KEYS = ("model", "torchscript", "factory", "factory_options", "state_dict",
              "input_shape", "test_time", "kalman_head", "export")
EXPORT_KEYS = ("every_updates",)


def check_torch_config(block: Any, path: str, models: tuple[str, ...]) -> dict[str, Any]:
    """Validate a stream's ``torch:`` block without importing torch; return it with its
    defaults filled in. Errors are ``ValueError`` starting with the field's path."""
    if not isinstance(block, dict):
        raise ValueError(f"{path}: expected a mapping")
    unknown = sorted(set(block) - set(TORCH_KEYS))
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown setting (settings: "
                         f"{', '.join(TORCH_KEYS)})")
    config = dict(block)
    name = config.get("model", models[0] if len(models) == 1 else None)
    if name is None:
        raise ValueError(f"{path}.model: required when the stream has several models (which "
                         f"of {', '.join(models)} is the torch model)")
    if name not in models:
        raise ValueError(f"{path}.model: {name!r} is not one of the stream's models "
                         f"({', '.join(models)})")
    config["model"] = name
    if ("torchscript" in config) == ("factory" in config):
        raise ValueError(f"{path}: give exactly one of 'torchscript' (a TorchScript file) or "
                         "'factory' ('package.module:function', with 'state_dict')")
    shape = config.get("input_shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"{path}.input_shape: required, a list of positive integers (one "
                         f"input's shape, e.g. [1, 28, 28]), got {shape!r}")
    for key in ("test_time", "kalman_head", "factory_options"):
        value = config.get(key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}.{key}: expected a mapping of options (or null)")
    export = config.get("export") or {}
    if not isinstance(export, dict):
        raise ValueError(f"{path}.export: expected a mapping")
    unknown = sorted(set(export) - set(EXPORT_KEYS))
    if unknown:
        raise ValueError(f"{path}.export.{unknown[0]}: unknown setting")
    every = export.get("every_updates", 100)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"{path}.export.every_updates: must be an integer >= 1, got {every!r}")
    config["export"] = {"every_updates": every}
    return config


class DeployedTorchModel:
    """One stream's torch model with its adapters (see the module docstring)."""

    def __init__(self, config: dict[str, Any], n_classes: int, path: str = "torch") -> None:
        from streamweights.adapters.torch.kalman_head import KalmanHead
        from streamweights.adapters.torch.loading import load_model
        from streamweights.adapters.torch.test_time import TestTimeAdapter

        self.config = config
        self.name = config["model"]
        self.n_classes = n_classes
        self.input_shape = tuple(config["input_shape"])
        self.input_size = math.prod(self.input_shape)
        self.every_updates = config["export"]["every_updates"]
        try:
            self.deployed = load_model(torchscript=config.get("torchscript"),
                                       factory=config.get("factory"),
                                       state_dict=config.get("state_dict"),
                                       factory_options=config.get("factory_options"))
            self.test_time = (None if config.get("test_time") is None else
                              TestTimeAdapter(self.deployed, n_classes, self.input_shape,
                                              **config["test_time"]))
            served = self.test_time.model if self.test_time is not None else self.deployed
            self.kalman_head = (None if config.get("kalman_head") is None else
                                KalmanHead(served, n_classes, self.input_shape,
                                           **config["kalman_head"]))
        except TypeError as error:  # an unknown option name
            raise ValueError(f"{path}: {error}") from None
        except ValueError as error:
            raise ValueError(f"{path}.{error}") from None
        self.exported_at = 0

    # -- serving and learning ---------------------------------------------------------
    def inputs(self, features: list[float] | None) -> np.ndarray:
        """The model input from a prediction's ``features``; ``ValueError`` naming it."""
        if features is None:
            raise ValueError(f"features: missing; stream model {self.name!r} is a torch model "
                             f"and needs its input ({self.input_size} numbers, shape "
                             f"{list(self.input_shape)} flattened)")
        if len(features) != self.input_size:
            raise ValueError(f"features: expected {self.input_size} numbers (shape "
                             f"{list(self.input_shape)} flattened), got {len(features)}")
        return np.asarray(features, dtype=np.float32).reshape((1, *self.input_shape))

    def serve(self, inputs: np.ndarray) -> tuple[np.ndarray, list[float] | None]:
        """Probabilities ``(C,)`` served for one input, and the head features to keep for
        the label (``None`` without a Kalman head); pure (see :meth:`observe`)."""
        if self.kalman_head is not None:
            head_features = self.kalman_head.features(inputs)
            return (self.kalman_head.predict_features(head_features)[0],
                    head_features[0].tolist())
        if self.test_time is not None:
            return self.test_time.predict_many(inputs)[0], None
        return _softmax_of(self.deployed, inputs), None

    def frozen_probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """What the deployed model, as shipped, says about one input (for scoring the
        adaptation against it)."""
        return _softmax_of(self.deployed, inputs)

    def observe(self, inputs: np.ndarray) -> None:
        """Let test-time adaptation see an input that was served and accepted."""
        if self.test_time is not None:
            self.test_time.observe_many(inputs)

    def learn(self, head_features: list[float] | None, label: int) -> None:
        if self.kalman_head is not None and head_features is not None:
            self.kalman_head.learn_features(np.asarray([head_features]), [label])

    def on_drift(self) -> None:
        for adapter in (self.test_time, self.kalman_head):
            if adapter is not None:
                adapter.on_drift()

    # -- export -----------------------------------------------------------------------
    @property
    def updates(self) -> int:
        """Adaptation steps plus labels learned so far."""
        return ((self.test_time.n_updates_ if self.test_time is not None else 0)
                + (self.kalman_head.n_updates_ if self.kalman_head is not None else 0))

    def export_due(self) -> bool:
        return self.updates - self.exported_at >= self.every_updates

    def export(self, stream: str, version: int) -> tuple[bytes, str]:
        """The adapted weights as safetensors bytes and their digest; resets the count."""
        from streamweights.adapters.torch._tensors import tensors_to_numpy

        tensors = (self.test_time.export_tensors() if self.test_time is not None
                   else tensors_to_numpy(self.deployed.state_dict()))
        if self.kalman_head is not None:
            tensors.update(self.kalman_head.export_tensors())
        self.exported_at = self.updates
        return encode_weights(tensors, {"stream": stream, "version": str(version),
                                        "model": self.name})

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"test_time": None if self.test_time is None else self.test_time.state_dict(),
                "kalman_head": None if self.kalman_head is None
                else self.kalman_head.state_dict(),
                "exported_at": self.exported_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, adapter in (("test_time", self.test_time), ("kalman_head", self.kalman_head)):
            if (state[key] is None) != (adapter is None):
                raise ValueError(f"snapshot: torch.{key} is {'off' if state[key] is None else 'on'}"
                                 " in the snapshot but not in the config")
            if adapter is not None:
                adapter.load_state_dict(state[key])
        self.exported_at = int(state["exported_at"])


def _softmax_of(model: Any, inputs: np.ndarray) -> np.ndarray:
    from streamweights.adapters.torch._require import require_torch

    torch = require_torch()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(inputs)), dim=1)[0].double().numpy()
