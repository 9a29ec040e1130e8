"""A Kafka-mode restore under a config whose streams differ from the changelog's in some
streams: each stream record carries its own stream's settings digest, so a stream added
starts fresh, one removed stays in the changelog (not restored; put back, it takes none
of the logged records it missed; ``--drop-removed-streams`` deletes it instead), and one
whose settings changed is refused by name unless the run says
``--fresh-changed-streams``; ``inspect --config`` says so first."""

from __future__ import annotations

import json
import re

import yaml
from kafka import KafkaAdminClient

from streamweights.adapters.state_codec import loads_state
from streamweights.config import parse_config
from streamweights.runtime.commit_spread import decode_log, parse_log_key
from streamweights.runtime.compression import decompress
from streamweights.runtime.kafka_runtime import FAIL_BEFORE_COMMIT_ENV, ChangelogReader
from streamweights.runtime.settings_digest import settings_digests
from streamweights.runtime.state_store import record_text
from tests.kafka.helpers import make_topics, read_records
from tests.kafka.test_kafka_crash import cli
from tests.kafka.test_kafka_incremental_changelog import _embedded_then_failed_commit
from tests.service.drifting import run_cli
from tests.service.test_stream_settings_changes import changed_settings

#: Two streams with records on both sides of the failed commit.
CHANGED, REMOVED, ADDED = "segment-2", "segment-7", "segment-new"


def test_a_restart_with_streams_added_removed_and_changed(tmp_path, kafka_bootstrap,
                                                          topic_factory):
    """Scenario: the eight bursty streams in one task; the 8th commit fails and the
    process exits. The restart's config changes ``segment-2``'s publishing, drops
    ``segment-7`` and adds ``segment-new``: run without, then with
    ``--fresh-changed-streams``, then once more without it.
    We expect: the first exits 1 naming ``segment-2`` and the flag; the second restores
    the six unchanged streams (their summaries are the uninterrupted embedded run's),
    warns that ``segment-7``'s state stays in the changelog, starts ``segment-new`` and
    ``segment-2`` fresh and writes the latter's record with its new settings digest; the
    third is not refused and warns about ``segment-7`` again. ``inspect --config`` says
    each time what the restart would do, and exits 1 where it is refused."""
    expected, topics, config_path = _embedded_then_failed_commit(
        tmp_path, kafka_bootstrap, topic_factory, predictions=1200, failing_commit=8)
    document = yaml.safe_load(config_path.read_text())
    streams = [s for s in changed_settings(document["streams"], CHANGED) if s["name"] != REMOVED]
    document["streams"] = [*streams, {**streams[0], "name": ADDED}]
    changed = tmp_path / "kafka" / "changed.yaml"
    changed.write_text(yaml.safe_dump(document))
    summary = tmp_path / "summary.json"

    plan = inspect(config_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "1 task(s), 1 with records" in plan.stdout
    assert "the same stream settings; a restore restores all 8 stream(s)" in plan.stdout
    plan = inspect(changed)
    assert plan.returncode == 1, plan.stderr[-2000:]
    assert (f"a restore restores 6 stream(s) as saved\n  added (start fresh): '{ADDED}'\n"
            f"  removed (kept as saved, not restored; run --drop-removed-streams deletes "
            f"them): '{REMOVED}'\n  changed (refused "
            f"without --fresh-changed-streams, which starts them fresh): '{CHANGED}'\n"
            ) in plan.stdout
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({**document, "kafka": {
        **document["kafka"], "changelog_topic": "no-such-changelog"}}))
    plan = inspect(missing)
    assert plan.returncode == 0 and "no-such-changelog: no such topic" in plan.stdout
    empty = make_topics(topic_factory, partitions=2)["changelog"]
    missing.write_text(yaml.safe_dump({**document, "kafka": {
        **document["kafka"], "changelog_topic": empty}}))
    plan = inspect(missing)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert (f"{empty}: 2 task(s), 0 with records (the 8 stream(s) of the others start "
            f"fresh)\nunder {missing}: nothing to restore\n") in plan.stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert "no-such-changelog" not in admin.list_topics()  # (not created by reading)
    finally:
        admin.close()

    refused = cli("--config", str(changed))
    assert refused.returncode == 1
    assert f"1 stream(s) changed since, '{CHANGED}';" in refused.stderr
    assert "--fresh-changed-streams" in refused.stderr

    fresh = cli("--config", str(changed), "--fresh-changed-streams", "--summary", str(summary))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"holds the state of '{REMOVED}', no longer in the config" in fresh.stderr
    assert f"'{CHANGED}' start(s) fresh under new settings" in fresh.stderr
    assert f"'{ADDED}' without a record (new to the config, or none written yet)" in fresh.stderr
    got = json.loads(summary.read_text())["streams"]
    unchanged = set(expected) - {CHANGED, REMOVED}
    assert len(unchanged) == 6
    assert {name: got[name] for name in unchanged} == {name: expected[name]
                                                       for name in unchanged}
    assert got[CHANGED]["labels"] < expected[CHANGED]["labels"]  # (fresh at the restart)

    own = settings_digests(parse_config(document).streams).streams
    newest = {}
    for record in read_records(kafka_bootstrap, topics["changelog"]):
        if record.key.startswith(b"s/") and record.value is not None:
            newest[record.key[2:].decode()] = loads_state(
                record_text(decompress(record.value))[0])
    assert newest[CHANGED]["stream_settings"] == own[CHANGED]
    assert REMOVED in newest  # kept as saved

    plan = inspect(changed)
    assert plan.returncode == 0, plan.stdout
    assert "changed (" not in plan.stdout and f"removed (kept as saved, not restored; " \
        f"run --drop-removed-streams deletes them): '{REMOVED}'" in plan.stdout
    again = cli("--config", str(changed))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "changed since" not in again.stderr
    assert f"holds the state of '{REMOVED}', no longer in the config" in again.stderr


def inspect(config):
    """``streamweights inspect --config CONFIG``: what a restart under it would do."""
    return run_cli("inspect", "--config", str(config))


def test_a_stream_put_back_takes_none_of_the_logged_records_it_missed(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: the eight bursty streams in one task; the 8th commit fails. The restart
    drops ``segment-7`` and spreads its commits (``spread_above: 1, spread_over: 2``, so
    commits log the records that streams left unwritten need), and its 6th commit fails:
    the changelog then holds logged records of ``segment-7`` (dead letters in that run)
    newer than its record. Then two restarts that fail before their first commit (so the
    changelog stays as it is): one with ``segment-7`` put back, one without it.
    We expect: the task's records name ``segment-7`` as kept; both restarts replay the
    same number of logged records (none into ``segment-7``: they were dead letters)."""
    _, topics, config_path = _embedded_then_failed_commit(
        tmp_path, kafka_bootstrap, topic_factory, predictions=1200, failing_commit=8)
    document = yaml.safe_load(config_path.read_text())
    document["checkpoint"].update(spread_above=1, spread_over=2)
    without = tmp_path / "kafka" / "without.yaml"
    without.write_text(yaml.safe_dump({**document, "streams": [
        s for s in document["streams"] if s["name"] != REMOVED]}))
    put_back = tmp_path / "kafka" / "put-back.yaml"
    put_back.write_text(yaml.safe_dump(document))
    failed = cli("--config", str(without), env={FAIL_BEFORE_COMMIT_ENV: "6"})
    assert failed.returncode != 0 and "failing before commit 6" in failed.stderr

    written, missed, kept = 0, 0, None
    records = read_records(kafka_bootstrap, topics["changelog"])
    for record in records:
        if record.key == b"s/" + REMOVED.encode() and record.value is not None:
            written = loads_state(record_text(decompress(record.value))[0])["records"]
        elif record.key.startswith(b"s/") and record.value is not None:
            kept = loads_state(record_text(decompress(record.value))[0]).get("kept")
    assert kept == [REMOVED]
    for record in records:
        if parse_log_key(record.key) is not None and record.value is not None:
            start, logged = decode_log(record.value, "test")
            missed += sum(json.loads(raw)["stream"] == REMOVED
                          for index, raw in enumerate(logged, start) if index >= written
                          and raw.startswith(b"{") and raw.rstrip().endswith(b"}"))
    assert missed > 0  # (what a replay into the stream put back would take)

    replayed = {}
    for name, path in (("put back", put_back), ("without", without)):
        restarted = cli("--config", str(path), env={FAIL_BEFORE_COMMIT_ENV: "1"})
        assert "failing before commit 1" in restarted.stderr, restarted.stderr[-3000:]
        found = re.search(r"([\d,]+) logged records replayed", restarted.stderr)
        replayed[name] = int(found.group(1).replace(",", "")) if found else 0
    assert replayed["put back"] == replayed["without"] > 0


def test_a_removed_stream_dropped_by_the_run_leaves_the_changelog(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: the eight bursty streams in one task; the 8th commit fails. The restart
    drops ``segment-7`` from the config with ``--drop-removed-streams``; then one more
    restart without the flag. We expect: the first warns, naming the stream, and the
    seven others' summaries are the uninterrupted embedded run's; every changelog key of
    ``segment-7`` (its record, its join segments, their parts) ends in a tombstone, so
    compaction deletes them all, and a reader of the changelog finds the task without
    it; ``inspect --config`` then says a restore restores every stream; the second
    restart does not name it."""
    expected, topics, config_path = _embedded_then_failed_commit(
        tmp_path, kafka_bootstrap, topic_factory, predictions=1200, failing_commit=8)
    document = yaml.safe_load(config_path.read_text())
    document["streams"] = [s for s in document["streams"] if s["name"] != REMOVED]
    without = tmp_path / "kafka" / "without.yaml"
    without.write_text(yaml.safe_dump(document))
    summary = tmp_path / "summary.json"
    dropping = cli("--config", str(without), "--drop-removed-streams", "--summary",
                   str(summary))
    assert dropping.returncode == 0, dropping.stderr[-3000:]
    assert f"drops the state of '{REMOVED}', no longer in the config" in dropping.stderr
    got = json.loads(summary.read_text())["streams"]
    others = set(expected) - {REMOVED}
    assert set(got) == others
    assert {name: got[name] for name in others} == {name: expected[name] for name in others}

    last: dict[bytes, bytes | None] = {}
    reader = ChangelogReader()
    for record in read_records(kafka_bootstrap, topics["changelog"]):
        last[record.key] = record.value
        reader.add(record.partition, record.key, record.value)
    removed = {key for key in last if key.endswith(b"/" + REMOVED.encode())}
    assert b"s/" + REMOVED.encode() in removed
    assert any(key.startswith(b"j/") for key in removed)  # (predictions were waiting)
    assert {key: last[key] for key in removed} == dict.fromkeys(removed)
    (task,) = reader.tasks().values()
    assert set(task.streams) == others and "kept" not in task.meta

    plan = inspect(without)
    assert plan.returncode == 0, plan.stdout
    assert "the same stream settings; a restore restores all 7 stream(s)" in plan.stdout
    again = cli("--config", str(without))
    assert again.returncode == 0, again.stderr[-3000:]
    assert REMOVED not in again.stderr
