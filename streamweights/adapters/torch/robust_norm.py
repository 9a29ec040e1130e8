"""Robust batch normalisation: normalisation statistics that follow the test stream slowly.

A deployed BatchNorm layer normalises with statistics of the training data; under a
covariate shift (noise, blur, lower contrast) those statistics are wrong and accuracy
drops. Normalising with each test batch's own statistics fixes the shift but, when the
stream is class-correlated (many images of one class in a row), injects the class into
the statistics. RoTTA's robust BN (Yuan et al., CVPR 2023) keeps one global estimate that
moves toward each *adaptation* batch (drawn from a class-balanced memory) by a momentum
``α = 0.05`` and always normalises with it.

The layer keeps the names of the ``BatchNorm`` it replaces (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so its state dict loads
straight into the deployed architecture, and in evaluation mode it calls the same
``batch_norm`` kernel as ``BatchNorm`` in evaluation mode: an exported copy reproduces
the adapted outputs bit for bit.
"""

from __future__ import annotations

from typing import Any

from streamweights.adapters.torch._require import require_torch

#: The statistics momentum of RoTTA's released configs.
DEFAULT_STATISTICS_MOMENTUM = 0.05


def robust_batch_norm_class() -> type:
    """The ``RobustBatchNorm`` module class (built on first use so torch stays optional)."""
    global _ROBUST_BATCH_NORM
    if _ROBUST_BATCH_NORM is None:
        _ROBUST_BATCH_NORM = _define()
    return _ROBUST_BATCH_NORM


_ROBUST_BATCH_NORM: type | None = None


def _define() -> type:
    torch = require_torch()
    functional = torch.nn.functional

    class RobustBatchNorm(torch.nn.Module):
        """Drop-in replacement of a ``BatchNorm{1,2,3}d`` (see the module docstring).

        Training mode (adaptation updates only): batch statistics over every axis but the
        channel one (biased variance), blended into the global estimate with ``momentum``,
        and the blended statistics normalise the batch (gradients flow through the batch
        part, as in RoTTA). Evaluation mode: plain ``batch_norm`` with the global estimate.
        """

        def __init__(self, layer: Any, momentum: float) -> None:
            super().__init__()
            if layer.running_mean is None or layer.running_var is None:
                raise ValueError(f"model: {type(layer).__name__} without running statistics "
                                 "(track_running_stats=False) cannot be made robust")
            channels = layer.num_features
            affine = layer.affine
            self.num_features = channels
            self.eps = float(layer.eps)
            self.momentum = float(momentum)
            weight = layer.weight.detach().clone() if affine else torch.ones(channels)
            bias = layer.bias.detach().clone() if affine else torch.zeros(channels)
            self.weight = torch.nn.Parameter(weight, requires_grad=affine)
            self.bias = torch.nn.Parameter(bias, requires_grad=affine)
            self.register_buffer("running_mean", layer.running_mean.detach().clone())
            self.register_buffer("running_var", layer.running_var.detach().clone())
            tracked = getattr(layer, "num_batches_tracked", None)
            if tracked is not None:
                self.register_buffer("num_batches_tracked", tracked.detach().clone())

        def forward(self, x: Any) -> Any:
            if not self.training:
                return functional.batch_norm(x, self.running_mean, self.running_var,
                                             self.weight, self.bias, False, 0.0, self.eps)
            axes = [0, *range(2, x.dim())]
            shape = [1, -1] + [1] * (x.dim() - 2)
            batch_mean = x.mean(dim=axes)
            # The mean of squared deviations, not Tensor.var: the same biased variance,
            # several times faster on CPU for small feature maps.
            batch_var = (x - batch_mean.view(shape)).square().mean(dim=axes)
            mean = (1.0 - self.momentum) * self.running_mean + self.momentum * batch_mean
            var = (1.0 - self.momentum) * self.running_var + self.momentum * batch_var
            with torch.no_grad():
                self.running_mean.copy_(mean.detach())
                self.running_var.copy_(var.detach())
            normalised = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
            return normalised * self.weight.view(shape) + self.bias.view(shape)

        def extra_repr(self) -> str:
            return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    return RobustBatchNorm


def make_batch_norm_robust(model: Any, momentum: float = DEFAULT_STATISTICS_MOMENTUM) -> int:
    """Replace every ``BatchNorm{1,2,3}d`` of ``model`` in place; return how many."""
    torch = require_torch()
    robust = robust_batch_norm_class()
    batch_norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, batch_norms):
                setattr(parent, child_name, robust(child, momentum))
                replaced += 1
    return replaced
