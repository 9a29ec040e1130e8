"""Which stream settings a snapshot was taken with: digests of the streams' config, so
that no stream is restored under settings its state cannot mean.

Two digests are written. ``config_digest`` is the one every release wrote: the fields
of each stream's settings in the order the config gave its keys. Written the same
settings in another key order (``{capacity: 64, detector: adwin}`` against
``{detector: adwin, capacity: 64}``, or a config rendered again by a tool that sorts
keys, as Helm's ``toYaml`` does), it differed, and the restore was refused for "other
stream settings". ``settings_digest`` hashes the same fields with every mapping's keys
sorted: the same settings, whatever the order. A snapshot that has it is checked
against it; one written before it existed, against ``config_digest`` as before. Both
stay in new snapshots, so the release before this one still restores them.

Each stream's record also carries its own stream's settings digest
(``SettingsDigests.streams``), so a restore under settings that differ in some streams
is not all-or-nothing (:func:`compare_streams`): a stream added to the config starts
fresh, one removed keeps its saved state (not restored), and only a stream whose own
settings changed needs the operator's word (``run --fresh-changed-streams``) to start
fresh; without it the restore is refused, naming the streams. The whole-config digests
stay the fast path: when they match, every stream does. ``inspect --config`` runs the
same comparison before a config is rolled out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

import orjson


@dataclass(frozen=True)
class SettingsDigests:
    """The digests of one service's stream settings (:func:`settings_digests`)."""

    #: In the config's key order: what every release wrote and checked.
    config: str
    #: With every mapping's keys sorted: the same for the same settings.
    settings: str
    #: Each stream's own settings digest (keys sorted), by name: what its records carry.
    streams: dict[str, str] = field(default_factory=dict)

    def meta(self) -> dict[str, str]:
        """The fields a snapshot's meta carries."""
        return {"config_digest": self.config, "settings_digest": self.settings}

    def match(self, meta: dict[str, Any]) -> bool:
        """Whether a snapshot's ``meta`` was written under these settings."""
        if "settings_digest" in meta:
            return meta["settings_digest"] == self.settings
        return meta.get("config_digest") == self.config


@dataclass(frozen=True)
class StreamChanges:
    """How the streams a snapshot saved differ from the config's (:func:`compare_streams`)."""

    #: In the config, without a saved state: they start fresh.
    added: list[str]
    #: Saved under other settings of their own (or by a release that recorded none).
    changed: list[str]
    #: Saved, no longer in the config: their state is kept as saved, not restored.
    removed: list[str]
    #: Of ``changed``, those whose records carry no settings digest (older releases).
    unrecorded: list[str]

    def refusal(self, where: str, remedy: str) -> str:
        """The one-line refusal of a restore that would start ``changed`` fresh."""
        note = ("" if not self.unrecorded else
                f" ({named(self.unrecorded)} saved by a release that recorded no per-stream "
                "settings: restore once with the settings they were saved with, and their "
                "next records carry them)")
        return (f"{where} was taken with other stream settings: {len(self.changed):,} "
                f"stream(s) changed since, {named(self.changed)}{note}; run with "
                f"--fresh-changed-streams to start those streams fresh (the others restore), "
                f"or {remedy}")


def compare_streams(digests: SettingsDigests, saved: Mapping[str, str | None],
                    held: Iterable[str]) -> StreamChanges:
    """Compare ``saved`` (each saved stream's settings digest, ``None`` where its record
    has none) with the config's streams ``held`` (in order)."""
    held = list(held)
    own = digests.streams
    added = [name for name in held if name not in saved]
    changed = [name for name in held if name in saved and saved[name] != own[name]]
    wanted = set(held)
    removed = sorted(name for name in saved if name not in wanted)
    unrecorded = [name for name in changed if saved[name] is None]
    return StreamChanges(added, changed, removed, unrecorded)


def combined(parts: Iterable[StreamChanges]) -> StreamChanges:
    """Several comparisons (one per Kafka task) as one, each list in the parts' order."""
    parts = list(parts)
    return StreamChanges(*([name for part in parts for name in getattr(part, column.name)]
                           for column in dataclass_fields(StreamChanges)))


def removed_only(changes: StreamChanges) -> StreamChanges:
    """``changes`` where the snapshot's digest matched the config's: every stream the
    config holds has its saved settings (a record without a digest is then no change),
    so only the saved streams the config no longer holds differ."""
    return StreamChanges([], [], changes.removed, [])


def named(names: list[str], shown: int = 5) -> str:
    """Stream names for a log line: the first ``shown`` quoted, then how many more."""
    listed = ", ".join(repr(name) for name in names[:shown])
    more = len(names) - shown
    return listed if more <= 0 else f"{listed} and {more:,} more"


def settings_digests(streams: Any) -> SettingsDigests:
    """Both digests of ``streams`` (``StreamConfig`` objects), and each stream's own."""
    fields = _fields(streams)
    sort = orjson.OPT_SORT_KEYS
    own = {str(values["name"]): _digest(values, sort)[:32] for values in fields}
    return SettingsDigests(_digest(fields, 0), _digest(fields, sort), own)


def _fields(streams: Any) -> list[dict[str, Any]]:
    """Each stream's settings as they are (orjson writes their dicts, lists and tuples as
    asdict's deep copies would be written, without ~60 us of copying per stream).
    ``n_features`` (added later) counts only when set, so a state folder written before
    it existed still restores with the same config."""
    fields = []
    for stream in streams:
        values = {field.name: getattr(stream, field.name) for field in dataclass_fields(stream)}
        if values.get("n_features") is None:
            values.pop("n_features", None)
        fields.append(values)
    return fields


def _digest(fields: list[dict[str, Any]] | dict[str, Any], option: int) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=option)).hexdigest()
