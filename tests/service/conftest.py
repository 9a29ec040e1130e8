"""Factories for service tests: configs written to disk and CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@pytest.fixture
def config_factory(tmp_path):
    """``make(name, **overrides)`` writes a copy of the demo config with outputs in
    ``tmp_path/name`` and the given top-level / source overrides; returns its path."""

    def make(name: str = "run", *, events: int = 4000, source: dict | None = None,
             checkpoint_every_records: int = 500, streams: list | None = None,
             http_port: int | None = None) -> pathlib.Path:
        document = yaml.safe_load(DEMO_CONFIG.read_text())
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        document["source"]["events"] = events
        if source is not None:
            document["source"] = source
        document["state_dir"] = str(folder / "state")
        document["checkpoint"] = {"every_records": checkpoint_every_records, "every_seconds": 30}
        document["http"] = {"host": "127.0.0.1", "port": http_port} if http_port is not None \
            else {"host": "127.0.0.1", "port": None}
        document["outputs"] = {"adapted": str(folder / "adapted.jsonl"),
                               "weights": str(folder / "weights.jsonl"),
                               "dead_letter": str(folder / "dead-letter.jsonl")}
        document["logging"] = {"format": "json", "progress_every_seconds": 1}
        if streams is not None:
            document["streams"] = streams
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    return make


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m streamweights ARGS`` to completion."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "streamweights", *args], capture_output=True,
                          text=True, env=env, cwd=kwargs.pop("cwd", REPO), timeout=600, **kwargs)


def start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "streamweights", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
