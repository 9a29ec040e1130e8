"""The first thing a new user runs: the demo on the embedded default."""

from __future__ import annotations

import pathlib

import yaml

from tests.service.conftest import DEMO_CONFIG, REPO, cli, read_json


def test_readme_first_command_runs_the_demo_config():
    """The README's first command must be the one this suite exercises."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- demo-command -->")
    block = readme[start:readme.index("<!-- /demo-command -->")]
    assert "streamweights run --config configs/demo.yaml" in block


def test_demo_adapts_better_than_the_best_deployed_model(tmp_path: pathlib.Path):
    """Scenario: the default demo config as shipped (>= 50,000 events, 3 deployed models,
    Agrawal concepts recurring), run to completion from an empty state folder.
    We expect: a printed summary; adapted log-loss at most 0.85 of the best single raw
    model's and adapted ECE at most half of that model's; every label learned once."""
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    assert document["source"]["events"] >= 50_000
    assert len(document["streams"][0]["models"]) >= 3
    summary_path = tmp_path / "summary.json"
    result = cli("run", "--config", str(DEMO_CONFIG), "--state-dir", str(tmp_path / "state"),
                 "--no-http", "--summary", str(summary_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "adapted / raw best" in result.stdout
    summary = read_json(summary_path)
    assert summary["complete"]
    stream = summary["streams"]["demo"]
    assert stream["predictions"] >= 50_000
    best, adapted = stream["scores"]["raw_best"], stream["scores"]["adapted"]
    assert best["model"] in document["streams"][0]["models"]
    assert adapted["log_loss"] <= 0.85 * best["log_loss"], (adapted, best)
    assert adapted["ece"] <= 0.5 * best["ece"], (adapted, best)
    assert adapted["count"] == stream["labels"]
    assert (stream["labels"] + stream["pending"] + stream["expired"] + stream["evicted"]
            == stream["predictions"])
    assert stream["drift_events"] >= 1
    assert summary["invalid"] == {}
    # the demo turns the conformal layer on: long-run coverage within a point of target
    for level, values in stream["coverage"]["adapted"].items():
        assert abs(values["coverage"] - (1 - float(level))) <= 0.01, (level, values)
        assert values["labels"] == stream["labels"]
    estimates = stream["estimates"]["adapted"]
    assert abs(estimates["estimated_accuracy"] - estimates["realised_accuracy"]) < 0.05
