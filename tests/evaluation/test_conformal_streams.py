"""Online conformal layers on streams of the evaluation suite (a fast subset; the full
table is in ``docs/results.md``, from ``bench/quality.py``).

Scenario: the default chain serves each stream with delayed labels; the conformal
layers run on its output as the pipeline runs them. We expect (issue 13's must-holds):
long-run coverage within a point of 1 - alpha for alpha = 0.1 and 0.05 on every stream
with at least 1,000 labels; after an abrupt change, coverage over 500 post-change
events back within 2 points within 1,000 events, while split conformal with a fixed
calibration window misses the target on the drifting stream; DtACI's sets no larger
than ACI's with the best fixed step chosen in hindsight.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from streamweights.evaluation.conformal import (
    ASSERTED_LABELS,
    COVERAGE_TOLERANCE,
    RECOVERY_EVENTS,
    evaluate_conformal,
)
from streamweights.evaluation.contenders import PipelineContender, default_chain
from streamweights.evaluation.episode import build_episode
from streamweights.evaluation.streams import suite_streams

#: name -> events replayed (None: all). sine-abrupt keeps its first change (a reversal
#: of the concept at event 5,000: every deployed model is confidently wrong after it).
SUBSET = {"sine-abrupt": 12_000, "bananas": None, "segment": None, "friedman-abrupt": 6_000}


@functools.cache
def _served(name: str, events: int | None):
    """The stream's episode and the default chain's output on it."""
    (stream,) = suite_streams([name], events=events)
    episode = build_episode(
        stream.make_examples(7), task=stream.task, train_window=stream.train_window,
        events=stream.events, seed=7, seconds_between_events=stream.seconds_between_events,
        mean_label_delay_seconds=stream.mean_label_delay_seconds,
        missing_label_rate=stream.missing_label_rate, name=stream.name)
    chain = PipelineContender("default chain", "ours", "",
                              adapters=default_chain(episode.task, episode.n_classes))
    return stream, episode, chain.run(episode).predictions


@functools.cache
def _result(name: str):
    stream, episode, served = _served(name, SUBSET[name])
    return stream, evaluate_conformal(episode, served, stream.change_points)


@pytest.mark.parametrize("name", list(SUBSET))
@pytest.mark.parametrize("method", ["dtaci", "aci:0.004", "aci:0.032"])
def test_long_run_coverage_within_a_point_of_target(name, method):
    _, result = _result(name)
    if result.n_labelled < ASSERTED_LABELS:
        pytest.fail(f"{name}: {result.n_labelled} labels; pick a longer stream for this test")
    for alpha, coverage in zip(result.alphas, result.runs[method].coverage(), strict=True):
        assert abs(coverage - (1 - alpha)) <= COVERAGE_TOLERANCE, (name, method, alpha,
                                                                    coverage)


def test_recovery_after_an_abrupt_change_and_split_conformal_misses():
    stream, result = _result("sine-abrupt")
    assert stream.change_points == (5_000,)
    for level, alpha in enumerate(result.alphas):
        recovery = result.recovery["dtaci"][level]
        assert recovery is not None and recovery <= RECOVERY_EVENTS, (alpha, recovery)
    split = result.runs["split"].coverage()
    assert any(abs(c - (1 - a)) > 5 * COVERAGE_TOLERANCE
               for c, a in zip(split, result.alphas, strict=True)), split
    assert any(r is None or r > RECOVERY_EVENTS for r in result.recovery["split"])


@pytest.mark.parametrize("name", ["sine-abrupt", "bananas"])
def test_dtaci_sets_no_larger_than_the_best_fixed_aci_step(name):
    _, result = _result(name)
    best = result.runs[result.best_aci].capped_mean_size(result.caps)
    dtaci = result.runs["dtaci"].capped_mean_size(result.caps)
    assert dtaci[0] <= best[0] * 1.005, (result.best_aci, dtaci, best)


@pytest.mark.parametrize(("name", "events"), [("agrawal-recurring", 8_000)])
def test_label_free_accuracy_estimate_on_calibrated_suite_streams(name, events):
    """Scenario: the default chain's served probabilities (calibrated by OnlinePlatt:
    ECE about 0.01 on this stream). We expect: the label-free accuracy estimate
    of every 500 consecutive labelled predictions, available when they are served, is
    within 0.02 on average of the accuracy their labels later show."""
    _, episode, served = _served(name, events)
    labelled = episode.labelled
    confidence = served.max(axis=1)[labelled]
    hits = (served.argmax(axis=1) == episode.targets)[labelled].astype(float)
    window = 500
    estimated = np.convolve(confidence, np.ones(window) / window, mode="valid")
    realised = np.convolve(hits, np.ones(window) / window, mode="valid")
    mae = float(np.abs(estimated - realised).mean())
    assert mae <= 0.02, mae
