"""Load a deployed torch model on CPU: a TorchScript file, or a factory plus a state dict.

The service adapts the model it is given, so loading must fail loudly and say why when
the file is missing, the state dict does not fit the architecture, or the model lacks
what an adaptation method needs (normalisation layers for test-time adaptation, a final
linear layer for the Kalman head). Errors are ``ValueError`` naming the setting.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import Any

from streamweights.adapters.torch._require import require_torch

#: Layer types whose affine parameters test-time adaptation trains and whose statistics
#: it re-estimates (by class name, so torch need not be imported to define the list).
NORMALISATION_LAYERS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm",
                        "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "RobustBatchNorm")


def load_model(*, torchscript: str | pathlib.Path | None = None, factory: str | None = None,
               state_dict: str | pathlib.Path | None = None,
               factory_options: dict[str, Any] | None = None) -> Any:
    """Load a deployed model on CPU in evaluation mode.

    Either ``torchscript`` (a file written by ``torch.jit.save``) or ``factory`` — a
    ``"package.module:function"`` that builds the architecture (called with
    ``factory_options``) — plus optionally ``state_dict`` (a file written by
    ``torch.save(model.state_dict())``, or a safetensors file), loaded strictly so a
    mismatch is an error rather than a half-initialised model.
    """
    torch = require_torch()
    if (torchscript is None) == (factory is None):
        raise ValueError("model: give exactly one of 'torchscript' (a TorchScript file) or "
                         "'factory' ('package.module:function', with 'state_dict')")
    if torchscript is not None:
        path = _existing_file(torchscript, "torchscript")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as error:
            raise ValueError(f"torchscript: {path} is not a TorchScript file ({_first_line(error)})"
                             ) from None
        return model.eval()
    model = _call_factory(factory, factory_options or {})
    if state_dict is not None:
        path = _existing_file(state_dict, "state_dict")
        tensors = _read_state_dict(path)
        load_state_dict_strictly(model, tensors, f"state_dict ({path})")
    return model.eval()


def load_state_dict_strictly(model: Any, tensors: dict[str, Any], what: str) -> None:
    """``model.load_state_dict(tensors)`` with an error that lists what did not match."""
    torch = require_torch()
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong_shape = sorted(name for name in set(own) & set(tensors)
                         if tuple(own[name].shape) != tuple(torch.as_tensor(tensors[name]).shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        if wrong_shape:
            name = wrong_shape[0]
            parts.append(f"wrong shape for {name}: file has "
                         f"{tuple(torch.as_tensor(tensors[name]).shape)}, model has "
                         f"{tuple(own[name].shape)}")
        raise ValueError(f"{what}: does not match the model's architecture ({'; '.join(parts)})")
    model.load_state_dict({name: torch.as_tensor(value) for name, value in tensors.items()})


def normalisation_layers(model: Any) -> list[tuple[str, Any]]:
    """``(name, module)`` of every normalisation layer, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if type(module).__name__ in NORMALISATION_LAYERS]


def require_normalisation(model: Any, method: str) -> None:
    """Raise when ``model`` has no normalisation layer: ``method`` adapts their parameters
    and statistics and has nothing to work on without them."""
    if not normalisation_layers(model):
        raise ValueError(f"model: {method} adapts normalisation layers (BatchNorm, LayerNorm, "
                         f"GroupNorm) and the model has none; name the parameters to adapt "
                         f"with 'adapt_parameters', or use the Kalman head")


def final_linear_layer(model: Any, name: str | None = None) -> tuple[str, Any]:
    """The model's output layer: the named ``nn.Linear``, else the last one."""
    torch = require_torch()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if name is not None:
        for candidate, module in linears:
            if candidate == name:
                return candidate, module
        raise ValueError(f"head: the model has no nn.Linear named {name!r} (linear layers: "
                         f"{', '.join(n for n, _ in linears) or 'none'})")
    if not linears:
        raise ValueError("model: the Kalman head tracks the final nn.Linear layer and the "
                         "model has none")
    return linears[-1]


def _existing_file(value: str | pathlib.Path, what: str) -> pathlib.Path:
    path = pathlib.Path(value)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    return path


def _call_factory(factory: str, options: dict[str, Any]) -> Any:
    torch = require_torch()
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"factory: expected 'package.module:function', got {factory!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"factory: cannot import {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"factory: {module_name!r} has no function {function_name!r}")
    model = function(**options)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"factory: {factory} returned {type(model).__name__}, not a "
                         "torch.nn.Module")
    return model


def _read_state_dict(path: pathlib.Path) -> dict[str, Any]:
    torch = require_torch()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise ValueError(f"state_dict: cannot read {str(path)!r} ({_first_line(error)})"
                         ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"state_dict: {str(path)!r} holds a {type(loaded).__name__}, not a "
                         "state dict (save model.state_dict(), not the model)")
    return loaded


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
