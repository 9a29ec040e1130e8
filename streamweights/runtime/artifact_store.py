"""The artifact store: versioned weight files of each stream in a local folder.

Layout: ``<root>/<stream>/<version>.safetensors`` (the stream name percent-encoded, the
version zero-padded to 10 digits so a listing sorts by version) with a small
``<version>.json`` beside it holding the digest and size. A file is written to a
temporary name in the same folder, fsync'ed, and renamed into place (the JSON last), so
a reader never sees half a file and a crash leaves either the old set or the new one.
After each write the oldest versions beyond ``retain`` are deleted.

Guarantees: a published version's bytes never change (versions are only written once
per content: a replay after a crash rewrites the same version with the same bytes).
Limitation: one writer per folder; in Kafka mode each replica writes its own tasks'
streams, so the folder must be shared (a volume) for the HTTP endpoint of one replica to
serve another's streams.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import urllib.parse
from typing import Any

import orjson

from streamweights.runtime.exceptions import RuntimeSetupError

SUFFIX = ".safetensors"
_VERSION_WIDTH = 10


class ArtifactStore:
    """Versioned weight files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], retain: int = 10) -> None:
        if retain < 1:
            raise RuntimeSetupError(f"artifacts.retain: must be >= 1, got {retain}")
        self.root = pathlib.Path(root)
        self.retain = retain
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RuntimeSetupError(f"artifacts.dir: cannot create {str(self.root)!r} "
                                    f"({error.strerror})") from None

    def _folder(self, stream: str) -> pathlib.Path:
        """The stream's folder, confined to the root: quoting leaves no ``/``, the names
        ``.`` and ``..`` are refused, and the resolved path must lie inside the root
        (a symlink planted in the root cannot lead out either)."""
        name = urllib.parse.quote(stream, safe="")
        if name in ("", ".", ".."):
            raise ValueError(f"stream: {stream!r} cannot name an artifact folder")
        folder = self.root / name
        root = self.root.resolve()
        if os.path.commonpath([root, folder.resolve()]) != str(root):
            raise ValueError(f"stream: the artifact folder of {stream!r} lies outside "
                             f"{self.root}")
        return folder

    @staticmethod
    def location(stream: str, version: int) -> str:
        """Path of a version relative to the store root (what the weights record says)."""
        return f"{urllib.parse.quote(stream, safe='')}/{version:0{_VERSION_WIDTH}d}{SUFFIX}"

    def write(self, stream: str, version: int, data: bytes, digest: str) -> str:
        """Store one version atomically, prune old ones; return its location."""
        folder = self._folder(stream)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{version:0{_VERSION_WIDTH}d}"
        _write_atomically(folder / f"{name}{SUFFIX}", data)
        _write_atomically(folder / f"{name}.json", orjson.dumps(
            {"stream": stream, "version": version, "digest": digest, "bytes": len(data)}))
        self._prune(folder)
        return self.location(stream, version)

    def versions(self, stream: str) -> list[int]:
        """Stored versions of a stream, oldest first."""
        try:
            folder = self._folder(stream)
        except ValueError:
            return []
        if not folder.is_dir():
            return []
        found = []
        for path in folder.glob(f"*{SUFFIX}"):
            stem = path.name[: -len(SUFFIX)]
            if stem.isdigit() and (folder / f"{stem}.json").is_file():
                found.append(int(stem))
        return sorted(found)

    def read(self, stream: str, version: int) -> tuple[bytes, dict[str, Any]] | None:
        """``(bytes, manifest)`` of a stored version, or ``None`` if it is not stored
        (or ``stream`` cannot name a folder inside the root)."""
        try:
            folder = self._folder(stream)
        except ValueError:
            return None
        name = f"{version:0{_VERSION_WIDTH}d}"
        try:
            manifest = orjson.loads((folder / f"{name}.json").read_bytes())
            data = (folder / f"{name}{SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None
        return data, manifest

    def _prune(self, folder: pathlib.Path) -> None:
        stream = urllib.parse.unquote(folder.name)
        for version in self.versions(stream)[: -self.retain]:
            name = f"{version:0{_VERSION_WIDTH}d}"
            for suffix in (".json", SUFFIX):  # manifest first: a half-pruned one is unlisted
                with contextlib.suppress(FileNotFoundError):
                    (folder / f"{name}{suffix}").unlink()


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
