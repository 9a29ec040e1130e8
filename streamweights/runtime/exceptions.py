"""Errors of the runtime layer, so callers catch what they mean."""


class RuntimeSetupError(RuntimeError):
    """The service cannot start as configured (source, sink or state unusable)."""


class SnapshotError(RuntimeError):
    """A snapshot could not be written or read back."""
