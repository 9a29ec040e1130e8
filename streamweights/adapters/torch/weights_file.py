"""One version of adapted weights as bytes: safetensors, with a SHA-256 digest.

The weights record on the weights topic never carries tensors: it names the version,
the digest and where the file is. This module turns a name -> array mapping into the
file's bytes and back (pure; the artifact store in ``runtime/`` does the I/O). The
digest is over the exact bytes, so a consumer that checks it before loading detects a
truncated or corrupted file. safetensors is chosen because it holds only tensors (no
pickled code to execute on load) and torch, numpy and other runtimes read it directly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from streamweights.adapters.torch._require import require_safetensors

DIGEST_PREFIX = "sha256:"
#: The one metadata entry of a weights file: JSON of what it is (stream, version, model).
METADATA_KEY = "streamweights"


class DigestMismatchError(ValueError):
    """The bytes of a weights file do not match the digest they were published with."""


def digest_of(data: bytes) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def encode_weights(tensors: dict[str, np.ndarray],
                   metadata: dict[str, str] | None = None) -> tuple[bytes, str]:
    """safetensors bytes of ``tensors`` (with string ``metadata`` in the header) and
    their digest. Equal inputs give equal bytes."""
    safetensors_numpy = require_safetensors()
    if not tensors:
        raise ValueError("tensors: nothing to export")
    arrays = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        array = array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d
        if array.dtype == object:
            raise ValueError(f"tensors.{name}: not a numeric array")
        arrays[name] = array
    # safetensors writes its metadata map in hash order, which changes from one map to the
    # next: one key holding sorted JSON keeps equal inputs at equal bytes (and digests).
    header = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    data = safetensors_numpy.save(arrays, metadata=header)
    return data, digest_of(data)


def read_metadata(data: bytes) -> dict[str, str]:
    """The metadata written by :func:`encode_weights` (without loading the tensors)."""
    if len(data) < 8:
        raise ValueError("weights file: too short for a safetensors header")
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
        return json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"weights file: unreadable header ({error})") from None


def decode_weights(data: bytes, digest: str | None) -> dict[str, np.ndarray]:
    """The tensors of a weights file; with ``digest``, checked first (raises
    :class:`DigestMismatchError` naming both digests)."""
    if digest is not None:
        actual = digest_of(data)
        if actual != digest:
            raise DigestMismatchError(f"weights file: digest {actual} does not match the "
                                      f"published {digest}; the file is corrupted or "
                                      "truncated, do not load it")
    safetensors_numpy = require_safetensors()
    try:
        return safetensors_numpy.load(data)
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ValueError(f"weights file: not a safetensors file ({error})") from None


def load_into_model(model: Any, tensors: dict[str, np.ndarray], strict: bool = True) -> None:
    """Load decoded weights into a torch model of the deployed architecture.

    ``strict=True`` for a full export (test-time adaptation); ``strict=False`` for a head
    export (only the final layer), which must still name only existing entries.
    """
    from streamweights.adapters.torch._require import require_torch
    from streamweights.adapters.torch.loading import load_state_dict_strictly

    torch = require_torch()
    if strict:
        load_state_dict_strictly(model, tensors, "weights file")
        return
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"weights file: the model has no entry {unknown[0]!r}")
    merged = dict(own)
    merged.update({name: torch.from_numpy(np.asarray(value)) for name, value in tensors.items()})
    load_state_dict_strictly(model, merged, "weights file")
