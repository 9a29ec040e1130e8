"""The suite on a tiny configuration: tables, verdicts, the results page, the CLI verb."""

from __future__ import annotations

import io
import pathlib

import pytest
import yaml

from streamweights.cli import main
from streamweights.config import _stream
from streamweights.evaluation.command import evaluate
from streamweights.evaluation.contenders import DEFAULT_CHAIN, default_chain
from streamweights.evaluation.suite import (
    BEST_RAW,
    REFERENCES,
    RESULT_COLUMNS,
    headline,
    results_table,
    wins_ties_losses,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = ["sea-abrupt", "segment", "friedman-abrupt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    out = io.StringIO()
    suite = evaluate(TINY, events=500, train_window=300, replicates=200,
                     results_path=str(folder / "results.md"), out=out, progress=False,
                     notes={"segment": "a note written by a person"})
    return suite, folder / "results.md", out.getvalue()


def test_results_table_has_the_documented_columns(tiny):
    suite, _, _ = tiny
    rows = results_table(suite)
    assert [row["stream"] for row in rows] == TINY
    for row in rows:
        assert tuple(row) == RESULT_COLUMNS
        assert row["vs best raw"] in ("win", "tie", "loss")
        low, high = row["default chain CI"]
        assert low <= row["default chain"] <= high
    regression = rows[2]
    assert regression["metric"] == "mse" and regression["river stacking"] is None


def test_every_contender_is_scored_with_an_interval_around_its_mean(tiny):
    suite, _, _ = tiny
    for result in suite.streams:
        assert result.contenders[BEST_RAW].metrics == result.contenders[result.best_raw].metrics
        raw = [c for c in result.contenders.values() if c.name.startswith("raw:")]
        assert len(raw) == 3
        assert result.loss(BEST_RAW) == min(c.metrics[result.primary] for c in raw)
        for contender in result.contenders.values():
            assert contender.low <= contender.metrics[result.primary] <= contender.high
            assert contender.metrics["count"] == result.n_labelled
        families = {c.family for c in result.contenders.values()}
        assert families == {"raw", "baseline", "river", "ours"}
        for verdicts in result.comparisons.values():
            for comparison in verdicts.values():
                assert comparison.low <= comparison.difference <= comparison.high


def test_wins_ties_losses_add_up(tiny):
    suite, _, _ = tiny
    for row in wins_ties_losses(suite):
        assert row["win"] + row["tie"] + row["loss"] == row["streams"] <= len(TINY)
        assert row["reference"] in REFERENCES
    top = headline(suite)
    assert top["streams"] == len(TINY)
    assert 0.0 <= top["share_no_worse_than_best_raw"] <= 1.0


def test_results_page(tiny):
    _, path, printed = tiny
    page = path.read_text()
    assert page.startswith("# Evaluation results")
    assert "| " + " | ".join(RESULT_COLUMNS) + " |" in page
    for name in TINY:
        assert f"| {name} |" in page
    for section in ("## Headline", "## Wins / ties / losses", "## Speed",
                    "## Where the default chain loses, and why"):
        assert section in page
    assert "default chain no worse than the best raw model" in printed


def test_default_chain_is_the_demo_config_chain():
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert [dict(s) for s in DEFAULT_CHAIN] == demo["streams"][0]["adapters"]
    assert default_chain("classification", 7) == [dict(s) for s in DEFAULT_CHAIN]
    assert default_chain("regression", None) == [{"type": "Portfolio"}]
    # a stream that names no adapters gets the same chain (regression: the portfolio)
    stream = {"name": "s", "models": ["a", "b"]}
    assert list(_stream(dict(stream), "streams[0]").adapters) == demo["streams"][0]["adapters"]
    regression = _stream(dict(stream, task="regression"), "streams[0]")
    assert [s["type"] for s in regression.adapters] == ["Portfolio"]


def test_cli_verb(tmp_path, capsys):
    assert main(["evaluate", "--list"]) == 0
    assert "phishing" in capsys.readouterr().out
    assert main(["evaluate", "--streams", "phishing", "--events", "200", "--train-window",
                 "100", "--replicates", "50", "--results", str(tmp_path / "r.md")]) == 0
    assert "| phishing |" in (tmp_path / "r.md").read_text()
    assert main(["evaluate", "--streams", "nope"]) == 2
    assert "unknown stream" in capsys.readouterr().err
