"""Import torch only when a torch feature is used, with an error that says what to install.

``import streamweights`` must work on a machine without torch: every module of this
sub-package calls :func:`require_torch` inside the functions that need it instead of
importing torch at module level.
"""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "install streamweights[torch] (pip install 'streamweights[torch]')"


class TorchMissingError(ImportError):
    """A torch feature was used but torch (or safetensors) is not installed."""


def require_torch() -> ModuleType:
    """Return the ``torch`` module, or raise :class:`TorchMissingError` naming the extra."""
    try:
        import torch
    except ImportError as error:
        raise TorchMissingError(f"torch is not installed ({error}); {INSTALL_HINT}") from None
    return torch


def require_safetensors() -> ModuleType:
    """Return ``safetensors.numpy`` (weight files), or raise naming the extra."""
    try:
        import safetensors.numpy
    except ImportError as error:
        raise TorchMissingError(f"safetensors is not installed ({error}); "
                                f"{INSTALL_HINT}") from None
    return safetensors.numpy
