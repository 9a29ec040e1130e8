"""The CLI freezes the streams a service builds and restores out of the collector's scans
(runtime/heap.py). That is sound only if what replaces a stream's state later (a restore,
a Kafka rebalance rolling a task back) frees the old state without the cyclic collector:
the state must form no reference cycles. Each check runs in a fresh interpreter
(``replace_state_probe.py``), so that no other test's threads make garbage meanwhile.

A restore also gives the pages of the memory it freed back (``return_freed_pages``):
checked in a fresh interpreter too (``restore_memory_probe.py``), whose heap only the
restore has grown."""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import yaml

from streamweights.config import load_config
from streamweights.runtime.service import Service
from tests.service.conftest import REPO

PROBE = pathlib.Path(__file__).with_name("replace_state_probe.py")
RESTORE_PROBE = pathlib.Path(__file__).with_name("restore_memory_probe.py")
MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")


def _probe(config: pathlib.Path, stream: str, cwd: pathlib.Path) -> dict:
    result = subprocess.run([sys.executable, str(PROBE), str(config), stream],
                            capture_output=True, text=True, timeout=600, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def _assert_freed_by_reference_counts(found: dict) -> None:
    assert found["changed"]  # the run changed the state: two different states alternate
    assert len(set(found["counts"])) == 1, found["counts"]  # nothing accumulates
    assert (found["found"], found["garbage"]) == (0, [])  # no cycle left to collect


def test_replacing_a_streams_state_leaves_no_garbage_cycle(config_factory, tmp_path):
    """Scenario: the demo's stream (a portfolio of chains, DriftMemory, conformal layers,
    estimates, its join) after 1,500 events, its state replaced 20 times with the
    collector off. We expect: the objects the collector tracks come back to the same
    count after each pair of loads, and a collection then finds no garbage: each old
    state was freed by reference counts alone."""
    _assert_freed_by_reference_counts(
        _probe(config_factory("heap", events=1500), "demo", tmp_path))


def test_replacing_a_torch_streams_state_leaves_no_garbage_cycle(tmp_path):
    """Scenario: as above for ``configs/torch-digits.yaml``'s stream (a CNN with
    test-time adaptation, a Kalman head, weight exports), on the example's records.
    We expect: the same: nothing accumulates, no garbage cycle."""
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "torch_digits_example.py"),
                           "--out", str(tmp_path / "torch-example")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    document = yaml.safe_load((REPO / "configs" / "torch-digits.yaml").read_text())
    document["http"] = {"host": "127.0.0.1", "port": None}
    config = tmp_path / "config.yaml"  # its paths are relative to where it runs
    config.write_text(yaml.safe_dump(document))
    _assert_freed_by_reference_counts(_probe(config, "digits", tmp_path))


def _many_streams_run(config_factory, tmp_path, count: int, rounds: int) -> pathlib.Path:
    """``count`` streams of the demo's config, ``rounds`` predictions each with their
    labels, run to the end (its last checkpoint writes every stream); the config."""
    demo = yaml.safe_load(config_factory().read_text())["streams"][0]
    names = [f"s{i:03d}" for i in range(count)]
    rng = random.Random(5)
    lines = []
    for i in range(rounds):
        for name in names:
            ts = 1_750_000_000 + i
            p1 = round(rng.random(), 6)
            lines.append(json.dumps({"schema": 1, "stream": name, "id": f"{name}-{i}",
                                     "ts": ts, "outputs": {m: [round(1 - p1, 6), p1]
                                                           for m in MODELS}}))
            lines.append(json.dumps({"schema": 1, "stream": name, "id": f"{name}-{i}",
                                     "ts": ts + 0.5, "label": int(rng.random() < p1)}))
    input_path = tmp_path / "many.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    path = config_factory("many", streams=[{**demo, "name": name} for name in names],
                          source={"kind": "jsonl", "path": str(input_path)},
                          checkpoint_every_records=10**9)
    service = Service(load_config(path))
    try:
        service.run()
    finally:
        service.close()
    return path


def _restore_probe(config: pathlib.Path, *flags: str) -> dict:
    result = subprocess.run([sys.executable, str(RESTORE_PROBE), str(config), *flags],
                            capture_output=True, text=True, timeout=600,
                            cwd=config.parent, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_a_restore_gives_the_pages_it_freed_back(config_factory, tmp_path):
    """Scenario: 300 streams of the demo's config after 60 predictions and labels each,
    restored into a fresh interpreter; then glibc is asked once more to return freed
    heap pages. Control: the same restore without its own trim. We expect: the control's
    trim releases megabytes (reading states back leaves freed memory between the arrays
    it keeps), the restore's own trim has left nothing for it (under 1 MiB)."""
    config = _many_streams_run(config_factory, tmp_path, count=300, rounds=60)
    control = _restore_probe(config, "--keep-freed-pages")
    restored = _restore_probe(config)
    assert control["restored"] == restored["restored"] == 300
    # (~3.6 MiB; over 4 when every state was decoded before any was loaded)
    assert control["released"] > 2 * 2**20, control
    assert restored["released"] < 2**20, restored
