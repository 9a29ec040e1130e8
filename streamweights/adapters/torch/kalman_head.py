"""The deployed model's final linear layer, tracked by a Kalman filter as labels arrive.

Titsias et al. (ICLR 2024, "Kalman Filter for Online Classification of Non-Stationary
Data") keep a network's backbone and track only its last linear layer: the weights drift
(``w_t ~ N(γ w_{t-1}, (1-γ²) σ_w² I)``), a Kalman filter keeps their exact Gaussian
posterior over the penultimate features, and the forgetting ``γ`` is learned from how
well the filter predicts each new label. :class:`~streamweights.adapters.KalmanWeights`
is that filter (classification through the paper's Gaussian surrogate, probabilities
that marginalise the weight uncertainty); this module feeds it the deployed model's
penultimate features, read with a forward hook on the final ``nn.Linear``.

Optionally the served head is an exponential moving average of the filter's mean
(Soutif-Cormerais, Carta, van de Weijer, CoLLAs 2023: an EMA of weights is a cheap
temporal ensemble that removes the dip right after a change), with a warm-up
``λ_t = min(λ, 1 - 0.1 / (1 + t / 10))`` that starts at 0.9 as their schedule does
[ours: a smooth form of their step warm-up].

The filter's mean starts at the deployed head, scaled into the surrogate's target space
(centred one-hot vectors) by the least-squares factor that maps the deployed logits of
the first labelled batch onto their targets; until that first label it serves the
deployed head's softmax [ours; the paper starts from a zero mean].

Limitation, measured: the head learns the class mix of the labels it has seen. On a
class-correlated stream (long runs of one class) whose labels arrive 50 records late, it
keeps serving the class of 50 records ago: 0.29 accuracy against the frozen model's 0.39
on noisy digits (with timely labels on the same stream, 0.85; in random order with the
same delay, 0.71). Use it where labels are timely or the classes are mixed.
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import numpy as np

from streamweights.adapters.base import snapshot_state
from streamweights.adapters.kalman import KalmanWeights
from streamweights.adapters.torch._require import require_torch
from streamweights.adapters.torch._tensors import check_input, check_inputs
from streamweights.adapters.torch.loading import final_linear_layer
from streamweights.adapters.validation import as_finite_array, check_class_labels

#: The probit factor of ``KalmanWeights``' probabilities (π/4, see kalman.py).
_PROBIT_FACTOR = math.pi / 4.0

#: Bounds on the initial head scale: beyond them the deployed logits are degenerate
#: (all equal) or the first label contradicts the deployed head.
_SCALE_BOUNDS = (1e-3, 10.0)


class KalmanHead:
    """Track the final linear layer of a deployed classifier from delayed labels.

    Parameters
    ----------
    model
        The deployed ``torch.nn.Module`` (or a ``TestTimeAdapter.model``, to read features
        of the label-free adapted backbone); it is not modified.
    n_classes
        Number of classes (outputs of the final layer).
    input_shape
        Shape of one input.
    head
        Module name of the final ``nn.Linear`` (default: the last one).
    weights_average
        ``λ`` of the served EMA of weights (e.g. 0.99), or ``None`` to serve the filter's
        current posterior.
    initialise_from_head
        Start the filter's mean at the deployed head (see the module docstring); else at
        zero (uniform predictions until labels arrive).
    kalman_options
        Options of :class:`~streamweights.adapters.KalmanWeights` (``prior_variance``,
        ``noise_variance``, ``forgetting``, ``min_forgetting`` ...); ``n_features``,
        ``n_outputs`` and ``task`` are set here.

    Example
    -------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(),
    ...                           torch.nn.Linear(6, 3)).eval()
    >>> head = KalmanHead(net, n_classes=3, input_shape=(4,))
    >>> x = torch.randn(5, 4)
    >>> head.learn_many(x, [0, 1, 2, 1, 0])
    >>> head.predict_many(x).shape, head.n_updates_
    ((5, 3), 5)
    """

    state_version: ClassVar[int] = 1

    def __init__(self, model: Any, n_classes: int, input_shape: tuple[int, ...] | list[int], *,
                 head: str | None = None, weights_average: float | None = None,
                 initialise_from_head: bool = True,
                 kalman_options: dict[str, Any] | None = None) -> None:
        torch = require_torch()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.head_name, self._head = final_linear_layer(model, head)
        if self._head.out_features != n_classes:
            raise ValueError(f"n_classes: the head {self.head_name!r} has "
                             f"{self._head.out_features} outputs, not {n_classes}")
        if weights_average is not None and not 0 < weights_average < 1:
            raise ValueError(f"weights_average: must be in (0, 1) or None, got "
                             f"{weights_average}")
        options = dict(kalman_options or {})
        for fixed in ("n_features", "n_outputs", "task"):
            if fixed in options:
                raise ValueError(f"kalman_options.{fixed}: set by the head; remove it")
        self._model = model
        self.n_classes = n_classes
        self.input_shape = tuple(int(s) for s in input_shape)
        self.weights_average = weights_average
        self.initialise_from_head = initialise_from_head
        self.kalman_options = options
        self.n_features = self._head.in_features + 1  # + a constant 1 for the bias
        self.filter = KalmanWeights(n_features=self.n_features, n_outputs=n_classes,
                                    task="classification", **options)
        with torch.no_grad():
            weight = self._head.weight.detach().double().numpy()
            bias = (self._head.bias.detach().double().numpy() if self._head.bias is not None
                    else np.zeros(n_classes))
        #: The deployed head as ``(n_features, C)``: features @ it = deployed logits.
        self._deployed = np.vstack([weight.T, bias[None, :]])
        self._initialised = not initialise_from_head
        self._average = self.filter.mean_.copy() if weights_average is not None else None
        self._n_averaged = 0

    # -- features ---------------------------------------------------------------------
    def features(self, xs: Any) -> np.ndarray:
        """Penultimate features ``(n, n_features)`` (the head's input, then a 1) in float64."""
        torch = require_torch()
        inputs = check_inputs(xs, self.input_shape, "xs")
        captured: list[Any] = []
        hook = self._head.register_forward_hook(
            lambda module, args, output: captured.append(args[0]))
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.no_grad():
                self._model(inputs)
        finally:
            hook.remove()
            self._model.train(was_training)
        values = captured[-1].reshape(len(inputs), -1).double().numpy()
        return np.hstack([values, np.ones((len(values), 1))])

    def _check_features(self, rows: Any, name: str) -> np.ndarray:
        return as_finite_array(rows, name, (-1, self.n_features))

    # -- serving ----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        return self.predict_many(check_input(x, self.input_shape, "x"))[0]

    def predict_many(self, xs: Any) -> np.ndarray:
        """Class probabilities ``(n, C)``; pure."""
        return self.predict_features(self.features(xs))

    def predict_features(self, rows: Any) -> np.ndarray:
        """Probabilities from features already read (what the pipeline stores); pure."""
        features = self._check_features(rows, "features")
        if not self._initialised:
            logits = features @ self._deployed
            logits -= logits.max(axis=1, keepdims=True)
            weights = np.exp(logits)
            return weights / weights.sum(axis=1, keepdims=True)
        if self._average is None:
            return self.filter.predict_many(features)
        return self._averaged_probabilities(features)

    def _averaged_probabilities(self, features: np.ndarray) -> np.ndarray:
        """The filter's probit probabilities with the averaged mean in place of its own."""
        gamma = self.filter.forgetting_
        squared = gamma * gamma
        covariance = self.filter.covariance_
        variances = (squared * np.einsum("ij,jk,ik->i", features, covariance, features)
                     + (1.0 - squared) * self.filter.prior_variance
                     * np.einsum("ij,ij->i", features, features))
        beta = self.filter.calibration_
        shrink = 1.0 / np.sqrt(1.0 + _PROBIT_FACTOR * beta * beta * variances)
        logits = (features @ self._average) * (beta * shrink)[:, None]
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    # -- learning ---------------------------------------------------------------------
    def learn(self, x: Any, y: Any) -> None:
        self.learn_many(check_input(x, self.input_shape, "x"), [y])

    def learn_many(self, xs: Any, ys: Any) -> None:
        """Learn from labelled inputs, in order (one filter update per input)."""
        self.learn_features(self.features(xs), ys)

    def learn_features(self, rows: Any, ys: Any) -> None:
        """Learn from features read at prediction time and their labels, in order."""
        features = self._check_features(rows, "features")
        labels = check_class_labels(ys, "ys", self.n_classes)
        if labels.shape != (len(features),):
            raise ValueError(f"ys: expected {len(features)} labels, got shape {labels.shape}")
        if not len(features):
            return
        if not self._initialised:
            self._initialise(features, labels)
        for row, label in zip(features, labels.tolist(), strict=True):
            self.filter.learn(row, label)
            if self._average is not None:
                self._n_averaged += 1
                decay = min(self.weights_average, 1.0 - 0.1 / (1.0 + self._n_averaged / 10.0))
                self._average *= decay
                self._average += (1.0 - decay) * self.filter.mean_

    def _initialise(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Start the filter's mean at the deployed head, scaled to the surrogate targets."""
        logits = features @ self._deployed
        centred = logits - logits.mean(axis=1, keepdims=True)
        targets = np.full_like(centred, -1.0 / self.n_classes)
        targets[np.arange(len(labels)), labels] += 1.0
        denominator = float(np.sum(centred * centred))
        scale = float(np.sum(centred * targets)) / denominator if denominator > 0 else 0.0
        scale = min(max(scale, _SCALE_BOUNDS[0]), _SCALE_BOUNDS[1])
        start = scale * (self._deployed - self._deployed.mean(axis=1, keepdims=True))
        snapshot = self.filter.state_dict()
        snapshot["state"]["deviation"] = start
        self.filter.load_state_dict(snapshot)
        if self._average is not None:
            self._average = self.filter.mean_.copy()
        self._initialised = True

    def on_drift(self) -> None:
        """A drift alarm: the filter's one-off forgetting transition."""
        self.filter.on_drift()

    # -- views, export, state ---------------------------------------------------------
    @property
    def n_updates_(self) -> int:
        return self.filter.n_updates_

    @property
    def forgetting_(self) -> float:
        return self.filter.forgetting_

    def export_tensors(self) -> dict[str, np.ndarray]:
        """The served head as the deployed layer's ``weight`` and ``bias`` (float32, under
        the head's module name): ``β · mean`` — its logits give the served probabilities
        up to the uncertainty shrink ``1/sqrt(1 + π β² s / 4)``, which a linear layer
        cannot express (the ranking of classes is the same)."""
        if not self._initialised:
            head = self._deployed
        else:
            mean = self._average if self._average is not None else self.filter.mean_
            head = self.filter.calibration_ * mean
        dtype = self._head.weight.dtype
        tensors = {f"{self.head_name}.weight": np.ascontiguousarray(head[:-1].T)}
        if self._head.bias is not None:
            tensors[f"{self.head_name}.bias"] = np.ascontiguousarray(head[-1])
        return {name: value.astype(str(dtype).replace("torch.", "")) for name, value in
                tensors.items()}

    def get_config(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "input_shape": list(self.input_shape),
                "head": self.head_name, "weights_average": self.weights_average,
                "initialise_from_head": self.initialise_from_head,
                "kalman_options": copy.deepcopy(self.kalman_options)}

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": "KalmanHead", "version": self.state_version,
                "config": self.get_config(),
                "state": {"filter": self.filter.state_dict(), "initialised": self._initialised,
                          "average": None if self._average is None else self._average.copy(),
                          "n_averaged": self._n_averaged}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = snapshot_state(state_dict, "KalmanHead", self.state_version, self.get_config())
        self.filter.load_state_dict(state["filter"])
        self._initialised = bool(state["initialised"])
        average = state["average"]
        self._average = None if average is None else np.asarray(average, dtype=np.float64).copy()
        self._n_averaged = int(state["n_averaged"])
