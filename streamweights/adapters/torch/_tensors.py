"""Small conversions shared by the torch adapters: validated inputs, numpy state."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights.adapters.torch._require import require_torch


def check_inputs(xs: Any, input_shape: tuple[int, ...], name: str) -> Any:
    """A float32 CPU tensor ``(n, *input_shape)`` from an array-like batch; ``ValueError``
    naming ``name`` for a wrong shape or a non-finite value."""
    torch = require_torch()
    if isinstance(xs, torch.Tensor):
        tensor = xs.detach().to(dtype=torch.float32, device="cpu")
    else:
        try:
            tensor = torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: not numeric ({error})") from None
    if tuple(tensor.shape[1:]) != tuple(input_shape) or tensor.dim() != len(input_shape) + 1:
        raise ValueError(f"{name}: expected shape (n, {', '.join(map(str, input_shape))}), got "
                         f"{tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return tensor


def check_input(x: Any, input_shape: tuple[int, ...], name: str) -> Any:
    """One input as a batch of one."""
    array = x if not isinstance(x, list | tuple) else np.asarray(x, dtype=np.float32)
    return check_inputs(array[None, ...], input_shape, name)


def tensors_to_numpy(tensors: dict[str, Any]) -> dict[str, np.ndarray]:
    """A copy of a name -> tensor mapping as numpy arrays (same dtypes)."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in tensors.items()}


def copy_into(tensors: dict[str, Any], arrays: dict[str, Any], what: str) -> None:
    """Copy numpy arrays into existing tensors of the same names and shapes, in place."""
    torch = require_torch()
    missing = sorted(set(tensors) - set(arrays))
    if missing:
        raise ValueError(f"{what}: snapshot lacks {', '.join(missing[:4])}; taken with another "
                         "model?")
    with torch.no_grad():
        for name, tensor in tensors.items():
            value = torch.from_numpy(np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{what}: {name} has shape {tuple(value.shape)} in the snapshot, "
                                 f"{tuple(tensor.shape)} in the model")
            tensor.copy_(value.to(tensor.dtype))
