"""Which stream settings a snapshot was taken with: digests of the streams' config, so a
restore under other settings is refused rather than fed a state it cannot mean.

Two digests are written. ``config_digest`` is the one every release wrote: the fields
of each stream's settings in the order the config gave its keys. Written the same
settings in another key order (``{capacity: 64, detector: adwin}`` against
``{detector: adwin, capacity: 64}``, or a config rendered again by a tool that sorts
keys, as Helm's ``toYaml`` does), it differed, and the restore was refused for "other
stream settings". ``settings_digest`` hashes the same fields with every mapping's keys
sorted: the same settings, whatever the order. A snapshot that has it is checked
against it; one written before it existed, against ``config_digest`` as before. Both
stay in new snapshots, so the release before this one still restores them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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

    def meta(self) -> dict[str, str]:
        """The fields a snapshot's meta carries."""
        return {"config_digest": self.config, "settings_digest": self.settings}

    def match(self, meta: dict[str, Any]) -> bool:
        """Whether a snapshot's ``meta`` was written under these settings."""
        if "settings_digest" in meta:
            return meta["settings_digest"] == self.settings
        return meta.get("config_digest") == self.config


def settings_digests(streams: Any) -> SettingsDigests:
    """Both digests of ``streams`` (``StreamConfig`` objects)."""
    fields = _fields(streams)
    return SettingsDigests(_digest(fields, 0), _digest(fields, orjson.OPT_SORT_KEYS))


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


def _digest(fields: list[dict[str, Any]], option: int) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=option)).hexdigest()
