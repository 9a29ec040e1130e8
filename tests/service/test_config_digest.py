"""A snapshot's config digest: new stream settings that are left unset do not change it,
so a state folder written by an older release restores with the same config. Its
settings digest: the same settings written in another key order give the same one, so
such a config restores the state too (embedded and Kafka); a snapshot written before it
existed is checked against the config digest as before."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import pathlib

import orjson
import pytest
import yaml

from streamweights.config import load_config
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.service import Service
from streamweights.runtime.settings_digest import (
    SettingsDigests,
    StreamChanges,
    combined,
    compare_streams,
    named,
    removed_only,
    settings_digests,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: ``configs/demo.yaml``'s digest as the release before ``streams[].features`` wrote it.
DEMO_DIGEST = "2356593305c6155b56d7767e3d4d0b3ed75ec389df470a0b113567323e4fc0c8"


def test_digest_unchanged_without_features_and_changed_with_them():
    streams = load_config(str(ROOT / "configs" / "demo.yaml")).streams
    assert settings_digests(streams).config == DEMO_DIGEST
    declared = tuple(dataclasses.replace(s, n_features=4) for s in streams)
    assert settings_digests(declared).config != DEMO_DIGEST


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
        assert settings_digests(streams).config == expected, path


def reversed_keys(value):
    """``value`` with every mapping's keys in the reverse order, recursively."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


def test_the_settings_digest_ignores_key_order_and_nothing_else(tmp_path):
    """Scenario: every example config, and a copy whose streams' mappings (adapter specs,
    conformal and join blocks ...) list their keys in the reverse order; then one
    setting changed. We expect: the same settings digest for the copy, where the config
    digest (key order) differs for the demo; a changed setting changes both."""
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    for path in configs:
        document = yaml.safe_load(path.read_text())
        document["streams"] = reversed_keys(document["streams"])
        rewritten = tmp_path / path.name
        rewritten.write_text(yaml.safe_dump(document, sort_keys=False))
        given = settings_digests(load_config(str(path), environ={}).streams)
        reordered = settings_digests(load_config(str(rewritten), environ={}).streams)
        assert reordered.settings == given.settings, path
        if path.name == "demo.yaml":
            assert reordered.config != given.config
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo["streams"][0]["adapters"][1]["capacity"] = 32
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(demo))
    given = settings_digests(load_config(str(ROOT / "configs" / "demo.yaml")).streams)
    other = settings_digests(load_config(str(changed)).streams)
    assert other.settings != given.settings and other.config != given.config


def test_a_snapshot_is_checked_against_the_settings_digest_when_it_has_one():
    """Scenario: snapshot metas as this release writes them (both digests) and as the
    releases before did (the config digest alone). We expect: the first matched on the
    settings digest only, the second on the config digest only."""
    digests = settings_digests(load_config(str(ROOT / "configs" / "demo.yaml")).streams)
    assert digests.match(digests.meta())
    assert digests.match({"config_digest": "other", "settings_digest": digests.settings})
    assert not digests.match({"config_digest": digests.config, "settings_digest": "other"})
    assert digests.match({"config_digest": digests.config})
    assert not digests.match({"config_digest": digests.settings})
    assert not digests.match({})


def test_a_config_with_its_keys_in_another_order_restores_the_state(config_factory,
                                                                     tmp_path):
    """Scenario: the demo's config runs to input position 250 of 300 events and
    checkpoints; the same config with every stream mapping's keys in the reverse order
    (as a tool that rewrites YAML may leave it) runs on with the same state folder; then
    a config with one setting changed. We expect: the reordered one restores and reads
    on from the position the first reached (it was refused for "other stream settings"
    before); the changed one is refused."""
    path = config_factory("first", events=300)
    service = Service(load_config(str(path)), max_records=250)
    try:
        service.run()
        position = service.position
    finally:
        service.close()
    document = yaml.safe_load(path.read_text())
    document["streams"] = reversed_keys(document["streams"])
    reordered = tmp_path / "reordered.yaml"
    reordered.write_text(yaml.safe_dump(document, sort_keys=False))
    again = Service(load_config(str(reordered)))
    try:
        again.restore()
        assert again.position == position > 0
        again.run()
        assert again.position > position
    finally:
        again.close()
    document["streams"][0]["join"]["max_pending"] = 99_999
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))
    refused = Service(load_config(str(changed)))
    try:
        with pytest.raises(RuntimeSetupError, match="other stream settings"):
            refused.restore()
    finally:
        refused.close()


def test_each_streams_own_digest_moves_with_its_settings_alone(tmp_path):
    """Scenario: the demo's streams as given, with their mappings' keys reversed, and with
    one stream's setting changed. We expect: each stream's own digest (32 hex digits)
    ignores key order, and a changed setting moves that stream's digest alone; a stream
    named otherwise, with the same settings, has another digest."""
    path = ROOT / "configs" / "demo.yaml"
    given = settings_digests(load_config(str(path)).streams)
    assert given.streams and all(len(d) == 32 and int(d, 16) >= 0
                                 for d in given.streams.values())
    document = yaml.safe_load(path.read_text())
    document["streams"] = reversed_keys(document["streams"])
    document["streams"].append({**copy.deepcopy(document["streams"][0]), "name": "other"})
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(document, sort_keys=False))
    reordered = settings_digests(load_config(str(edited)).streams)
    first = document["streams"][0]["name"]
    assert {k: v for k, v in reordered.streams.items() if k != "other"} == given.streams
    assert reordered.streams["other"] != reordered.streams[first]
    document["streams"][0]["join"]["max_pending"] = 99_999
    edited.write_text(yaml.safe_dump(document, sort_keys=False))
    changed = settings_digests(load_config(str(edited)).streams)
    assert [k for k in changed.streams if changed.streams[k] != reordered.streams[k]] == [first]


def test_streams_compared_one_by_one_and_the_refusal_names_the_changed():
    """Scenario: saved digests against a config's: one stream as saved, one changed, one
    saved without a digest (an older release), one only saved, one only configured.
    We expect: each in its class, in config order; the refusal names the changed ones
    (the first five, then how many more), the flag, the remedy, and why the unrecorded
    one counts as changed. Two tasks' comparisons combine into one, a task whose
    snapshot digest matched contributing its removed streams alone."""
    digests = SettingsDigests("c", "s", {"a": "1" * 32, "b": "2" * 32, "c": "3" * 32,
                                         "new": "4" * 32})
    saved = {"gone": "5" * 32, "c": None, "b": "0" * 32, "a": "1" * 32}
    changes = compare_streams(digests, saved, ["a", "b", "c", "new"])
    assert changes == StreamChanges(added=["new"], changed=["b", "c"], removed=["gone"],
                                    unrecorded=["c"])
    line = changes.refusal("state_dir x: its snapshot", "use the old config")
    assert line.startswith("state_dir x: its snapshot was taken with other stream settings: "
                           "2 stream(s) changed since, 'b', 'c' ('c' saved by a release")
    assert line.endswith("run with --fresh-changed-streams to start those streams fresh "
                         "(the others restore), or use the old config")
    other = compare_streams(digests, {"a": "1" * 32, "x": None}, ["a", "z"])
    assert combined([changes, removed_only(other)]) == StreamChanges(
        added=["new"], changed=["b", "c"], removed=["gone", "x"], unrecorded=["c"])
    assert named([f"s{n}" for n in range(8)]) == "'s0', 's1', 's2', 's3', 's4' and 3 more"
    assert named(["only"]) == "'only'"
