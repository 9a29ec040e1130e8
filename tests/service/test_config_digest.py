"""A snapshot's config digest: new stream settings that are left unset do not change it,
so a state folder written by an older release restores with the same config."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import orjson

from streamweights.config import load_config
from streamweights.runtime.service import config_digest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: ``configs/demo.yaml``'s digest as the release before ``streams[].features`` wrote it.
DEMO_DIGEST = "2356593305c6155b56d7767e3d4d0b3ed75ec389df470a0b113567323e4fc0c8"


def test_digest_unchanged_without_features_and_changed_with_them():
    streams = load_config(str(ROOT / "configs" / "demo.yaml")).streams
    assert config_digest(streams) == DEMO_DIGEST
    declared = tuple(dataclasses.replace(s, n_features=4) for s in streams)
    assert config_digest(declared) != DEMO_DIGEST


def test_digest_of_every_example_config_is_the_one_asdict_gave():
    """The digest reads the stream settings' fields as they are (no deep copy per
    stream); it is the digest of their ``asdict`` copies, as every release wrote it."""
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        streams = load_config(str(path), environ={}).streams
        streams += tuple(dataclasses.replace(s, n_features=3, name=s.name + "-f")
                         for s in streams)
        values = []
        for stream in streams:
            fields = dataclasses.asdict(stream)
            if fields["n_features"] is None:
                del fields["n_features"]
            values.append(fields)
        expected = hashlib.sha256(orjson.dumps(values)).hexdigest()
        assert config_digest(streams) == expected, path
