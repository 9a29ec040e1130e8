"""Two replicas in one consumer group (must-hold #3): one is killed with SIGKILL while
it works; the other takes its task over from the changelog and the result equals a
single uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from kafka import KafkaConsumer, TopicPartition

from streamweights.config import load_config
from streamweights.runtime.faults import HOLD_UNTIL_ENV, KILL_AT_ENV
from streamweights.runtime.kafka_runtime import task_of
from tests.kafka.helpers import (
    REPO,
    STREAMS,
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    make_topics,
    produce_inputs,
    read_topic,
    write_input,
    write_kafka_config,
)

PARTITIONS = 2  # with two partitions "demo" and "other" hash to different tasks
KILL_AT = 1_500  # A's input position (records of its one task) at which it kills itself


def start(config_path, log_path, variables: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(variables or {})}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "streamweights", "run", "--no-http",
                                 "--config", str(config_path)], stdout=subprocess.DEVNULL,
                                stderr=log, env=environment, cwd=REPO)


def assignments(log_path) -> list[list[int]]:
    """Every task list the replica logged on assignment, in order."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return [[int(n) for n in re.findall(r"\d+", found)]
            for found in re.findall(r"assigned tasks \[([\d, ]*)\]", text)]


def wait_for(condition, timeout: float, what: str, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; {detail()}"
        time.sleep(0.05)


def test_survivor_takes_over_a_killed_replicas_task_with_identical_weights(
        tmp_path, kafka_bootstrap, topic_factory):
    """Scenario: replicas A and B (same group, own transactional ids, live mode) share
    two tasks, one stream each, on input written beforehand; both hold the input back
    until the group has given each one task, then A kills itself with SIGKILL after
    KILL_AT records of its task (some of it committed, not all). We expect: before the
    kill A and B owned one task each; afterwards B is assigned both tasks, restores A's
    from the changelog and commits the inputs to their ends; stopped with SIGTERM, B
    exits 0; a bounded run of the same group then only publishes the final versions, and
    the summary and the read_committed weights topic (versions 1..n per stream, none
    twice) equal an uninterrupted embedded run."""
    lines = write_input(tmp_path / "input.jsonl")
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    assert {task_of(name, PARTITIONS) for name, _ in STREAMS} == {0, 1}

    topics = make_topics(topic_factory, PARTITIONS)
    # All input is written first: live arrival order between the two topics is not what
    # this test is about (see the runtime's Guarantees), taking a task over is.
    produce_inputs(kafka_bootstrap, lines, topics["predictions"], topics["labels"])
    # A transaction every 20 records (results do not depend on the cadence), so that A
    # has committed part of its task when it dies.
    paths = {name: write_kafka_config(tmp_path / name, kafka_bootstrap, topics,
                                      checkpoint_every_records=20, stop_at_end=False,
                                      transactional_id=f"tx-{name}-{topics['predictions']}")
             for name in ("a", "b")}
    group = load_config(paths["a"]).kafka.group_id
    logs = {name: tmp_path / f"{name}.log" for name in paths}
    # Neither replica releases a record before the gate file exists, and A dies at a
    # fixed record of its task: what A has done when it dies does not depend on how
    # fast this machine is or on how long the second replica takes to join.
    gate = tmp_path / "gate"
    hold = {HOLD_UNTIL_ENV: str(gate)}
    processes = {"a": start(paths["a"], logs["a"], {**hold, KILL_AT_ENV: f"record:{KILL_AT}"}),
                 "b": start(paths["b"], logs["b"], hold)}
    watcher = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                            enable_auto_commit=False)
    inputs = [TopicPartition(topics[kind], n) for kind in ("predictions", "labels")
              for n in range(PARTITIONS)]
    end = watcher.end_offsets(inputs)
    task_records = len(lines) // PARTITIONS
    assert 0 < KILL_AT < task_records / 2, "A must die part-way through its task"

    def committed() -> dict:
        return {tp: watcher.committed(tp) or 0 for tp in inputs}

    def owned() -> list[list[int]]:
        return [(assignments(logs[name]) or [[]])[-1] for name in ("a", "b")]

    def one_task_each() -> bool:
        tasks = owned()
        return all(tasks) and sorted(tasks[0] + tasks[1]) == [0, 1]

    def detail() -> str:
        return (f"committed {committed()}, end {end}\nA's log:\n"
                f"{logs['a'].read_text()[-3000:]}\nB's log:\n{logs['b'].read_text()[-6000:]}")

    try:
        wait_for(one_task_each, 60, "the group to give each replica one task", detail)
        a_task = owned()[0]
        gate.touch()
        assert processes["a"].wait(timeout=60) == -signal.SIGKILL, logs["a"].read_text()[-3000:]
        assert owned()[0] == a_task, "A's task moved before A died"
        partition = TopicPartition(topics["predictions"], a_task[0])
        at_kill = committed()
        assert 0 < at_kill[partition] < end[partition], \
            f"A must have committed part of its task, not all of it; {detail()}"

        wait_for(lambda: assignments(logs["b"])[-1] == [0, 1], 40, "B to take A's task", detail)
        wait_for(lambda: committed() == end, 30, "B to commit to the end", detail)
        processes["b"].send_signal(signal.SIGTERM)
        assert processes["b"].wait(timeout=30) == 0, logs["b"].read_text()[-3000:]
    finally:
        watcher.close()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    final_path = write_kafka_config(tmp_path / "final", kafka_bootstrap, topics,
                                    checkpoint_every_records=200,
                                    transactional_id=f"tx-final-{topics['predictions']}")
    summary_path = tmp_path / "summary.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    final = subprocess.run([sys.executable, "-m", "streamweights", "run", "--no-http",
                            "--config", str(final_path), "--summary", str(summary_path)],
                           capture_output=True, text=True, env=environment, cwd=REPO,
                           timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["records"] == len(lines)
    assert summary["streams"] == reference
    weights = by_stream(read_topic(kafka_bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
