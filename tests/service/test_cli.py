"""CLI verbs and start-up errors: one clear line and a non-zero exit code."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from tests.service.conftest import DEMO_CONFIG, REPO, cli


def test_validate_accepts_the_demo_config():
    result = cli("validate", str(DEMO_CONFIG))
    assert result.returncode == 0
    assert "ok" in result.stdout


def test_validate_names_the_path_of_a_bad_field(tmp_path):
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    document["streams"][0]["adapters"][0]["drift_share"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    result = cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: streams[0].adapters[0].drift_share: must be in [0, 1), got 2")


def test_run_with_a_missing_file_source_fails_fast(config_factory, tmp_path):
    config = config_factory("missing", source={"kind": "jsonl",
                                               "path": str(tmp_path / "absent.jsonl")})
    result = cli("run", "--config", str(config))
    assert result.returncode == 1
    assert "source.path: cannot read" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_describes_a_snapshot(config_factory):
    config = config_factory("inspect", events=1500)
    assert cli("run", "--config", str(config)).returncode == 0
    result = cli("inspect", str(config.parent / "state"))
    assert result.returncode == 0
    assert "stream demo: 1,500 predictions" in result.stdout
    assert "naive_bayes" in result.stdout
    assert re.search(r"intact \([0-9]+ stream record\(s\), [0-9]+ join segment\(s\), ",
                     result.stdout), result.stdout
    empty = cli("inspect", str(config.parent / "nothing"))
    assert empty.returncode == 1


def test_scenarios_lists_the_default():
    result = cli("scenarios")
    assert result.returncode == 0
    assert "agrawal-recurring" in result.stdout


def test_every_shipped_config_validates(tmp_path):
    """Every config in configs/ validates; torch-digits.yaml once the files it reads
    exist (scripts/torch_digits_example.py makes them): before, validate names the
    missing file, as run's start-up would."""
    for path in sorted((DEMO_CONFIG.parent).glob("*.yaml")):
        if path.name == "torch-digits.yaml":
            continue
        result = cli("validate", str(path))
        assert result.returncode == 0, (path.name, result.stderr)
    torch_config = DEMO_CONFIG.parent / "torch-digits.yaml"
    result = cli("validate", str(torch_config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("config error: streams[digits].torch.state_dict: no such "
                                    "file")
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "torch_digits_example.py"),
                           "--out", str(tmp_path / "torch-example")], capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    result = cli("validate", str(torch_config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
