"""The CLI freezes the streams a service builds and restores out of the collector's scans
(runtime/heap.py). That is sound only if what replaces a stream's state later (a restore,
a Kafka rebalance rolling a task back) frees the old state without the cyclic collector:
the state must form no reference cycles. Each check runs in a fresh interpreter
(``replace_state_probe.py``), so that no other test's threads make garbage meanwhile."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import yaml

from tests.service.conftest import REPO

PROBE = pathlib.Path(__file__).with_name("replace_state_probe.py")


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
