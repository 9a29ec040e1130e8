"""A small JSONL input with an early drift, bad lines and blank lines, and runners for it.

The replay scenarios drift only every 12-15 thousand events; state tests need a drift
event within a few thousand records (a drift event lands in every later weights record,
which is where key order after a restore showed), dead letters (their file is an output
too) and blank lines (input positions that carry no record).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import yaml

from tests.service.conftest import DEMO_CONFIG, REPO

MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")
OUTPUTS = ("adapted.jsonl", "weights.jsonl", "dead-letter.jsonl")


def write_drifting_input(path: pathlib.Path, predictions: int = 1500, seed: int = 5,
                         delay: int = 8) -> list[str]:
    """Predictions of three models and their labels ``delay`` seconds later, in event-time
    order; the best model turns bad a third of the way in (ADWIN sees it ~550 labels in).
    Every 101st record is preceded by a truncated copy (a dead letter) and every 397th
    by a blank line. Returns the lines."""
    rng = random.Random(seed)
    records = []
    for i in range(predictions):
        y = rng.random() < 0.4
        outputs = {}
        for k, model in enumerate(MODELS):
            right = 0.1 if k == 0 and i >= predictions // 3 else (0.95, 0.7, 0.6)[k]
            sign = 1 if rng.random() < right else -1
            p_true = round(0.5 + 0.45 * sign * rng.uniform(0.5, 1), 6)
            p1 = p_true if y else round(1 - p_true, 6)
            outputs[model] = [round(1 - p1, 6), p1]
        ts = 1_750_000_000 + i
        records.append((ts, 0, json.dumps({"schema": 1, "stream": "demo", "id": f"e{i}",
                                           "ts": ts, "outputs": outputs})))
        records.append((ts + delay, 1, json.dumps({"schema": 1, "stream": "demo",
                                                   "id": f"e{i}", "ts": ts + delay,
                                                   "label": int(y)})))
    records.sort(key=lambda r: (r[0], r[1]))
    lines = []
    for n, (_, _, line) in enumerate(records):
        if n % 101 == 50:
            lines.append(line[: len(line) // 2])
        if n % 397 == 7:
            lines.append("")
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return lines


def write_config(folder: pathlib.Path, input_path: pathlib.Path, *,
                 checkpoint_every_records: int = 250) -> pathlib.Path:
    """The demo stream on ``input_path``, state and outputs in ``folder``."""
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    document["source"] = {"kind": "jsonl", "path": str(input_path)}
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": checkpoint_every_records,
                              "every_seconds": 3600}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {name.split(".")[0].replace("-", "_"): str(folder / name)
                           for name in OUTPUTS}
    document["logging"] = {"format": "json", "progress_every_seconds": 60}
    document["streams"][0]["publish"] = {"every_labels": 100, "every_seconds": 60}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m streamweights ARGS`` with extra environment variables."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streamweights", *args], capture_output=True,
                          text=True, env=full, cwd=REPO, timeout=600)


def start_cli(*args: str) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "streamweights", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full, cwd=REPO)


def outputs(folder: pathlib.Path, summary: str = "summary.json") -> dict[str, bytes]:
    """The run's output files and summary, as bytes."""
    return {name: (folder / name).read_bytes() for name in (*OUTPUTS, summary)}
