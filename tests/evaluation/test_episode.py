"""Episodes: a stream turned into frozen models' outputs and late labels."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pytest

from streamweights.config import SourceConfig
from streamweights.evaluation.episode import LABEL, PREDICTION, build_episode
from streamweights.evaluation.streams import SUITE, suite_streams
from streamweights.runtime.replay import SCENARIOS, ReplayStream


def test_episode_is_the_replay_record_for_record():
    """Scenario: the replay's sea-abrupt scenario, 500 events, seed 3, read once through
    the service's replay source and once as an episode.
    We expect: the same interleaving of predictions and labels, the same model outputs
    (bit for bit) and the same labels and times."""
    source = SourceConfig(scenario="sea-abrupt", events=500, seed=3, stream="s")
    records = [orjson.loads(raw) for _, raw in ReplayStream(source).records()]
    scenario = SCENARIOS["sea-abrupt"]
    episode = build_episode(scenario.make_stream(3), task="classification",
                            train_window=scenario.train_window, events=500, seed=3, name="s")
    assert len(records) == len(episode.schedule)
    for record, (kind, index) in zip(records, episode.schedule.tolist(), strict=True):
        assert record["id"] == f"s-{index}"
        if kind == PREDICTION:
            assert "outputs" in record
            assert record["ts"] == episode.prediction_ts[index]
            outputs = np.array([record["outputs"][m] for m in episode.model_names])
            np.testing.assert_array_equal(outputs, episode.outputs[index])
        else:
            assert kind == LABEL and record["label"] == episode.targets[index]
            assert record["ts"] == episode.label_ts[index]
    assert episode.labelled.sum() == sum("label" in r for r in records)


def test_regression_episode_and_delays():
    (stream,) = suite_streams(["friedman-abrupt"], events=300, train_window=200)
    episode = build_episode(stream.make_examples(1), task="regression", train_window=200,
                            events=300, seed=1, mean_label_delay_seconds=2.0)
    assert episode.outputs.shape == (300, 3)
    assert episode.n_classes is None and episode.targets.dtype == np.float64
    labelled = episode.labelled
    assert np.all(episode.label_ts[labelled] >= episode.prediction_ts[labelled])
    # every prediction precedes its label in the schedule, every label appears once
    seen: set[int] = set()
    for kind, index in episode.schedule.tolist():
        if kind == PREDICTION:
            seen.add(index)
        else:
            assert index in seen and labelled[index]
    assert (episode.schedule[:, 0] == LABEL).sum() == labelled.sum()


def test_too_short_a_stream_is_refused():
    with pytest.raises(ValueError, match="train_window"):
        build_episode(iter([({"a": 1.0}, 0)] * 5), task="classification", train_window=10,
                      events=None, seed=0)


@pytest.mark.parametrize("stream", [s for s in SUITE if s.kind == "real"], ids=lambda s: s.name)
def test_real_streams_load_offline(stream):
    """Each real stream reads the file bundled in the river wheel (no download): it has
    more examples than its training window, with numeric features and usable targets."""
    examples = list(itertools.islice(stream.make_examples(0), stream.train_window + 20))
    assert len(examples) == stream.train_window + 20
    for x, y in examples[:50]:
        assert x and all(isinstance(v, int | float) for v in x.values())
        if stream.task == "regression":
            assert isinstance(y, float)
        else:
            assert y is not None


def test_suite_covers_the_drift_kinds():
    kinds = " ".join(s.drift for s in SUITE if s.kind == "synthetic")
    for kind in ("abrupt", "gradual", "recurring", "prior shift"):
        assert kind in kinds
    assert {s.task for s in SUITE} == {"classification", "regression"}


def test_feature_chain_runs_on_an_episode_with_its_features():
    """Scenario: the evaluation sends an episode's features with its predictions to the
    default chain plus FeatureCorrection. We expect: fixed-order feature vectors (a key an
    event lacks reads 0), every prediction served and every label learned."""
    from streamweights.evaluation.contenders import (
        PipelineContender,
        feature_chain,
        feature_vectors,
    )

    (stream,) = suite_streams(["agrawal-recurring"], events=400, train_window=300)
    episode = build_episode(stream.make_examples(2), task="classification", train_window=300,
                            events=400, seed=2)
    vectors = feature_vectors(episode)
    keys = sorted(episode.train_features[0], key=str)
    assert vectors[5] == [float(episode.features[5][k]) for k in keys]
    contender = PipelineContender("feature chain", "ours", "", with_features=True,
                                  adapters=feature_chain(2, len(keys)))
    run = contender.run(episode)  # raises on any refused prediction or unlearned label
    assert run.predictions.shape == (400, 2)
    pipeline = next(iter(run.pipeline.streams.values()))
    assert pipeline.labels == int(episode.labelled.sum())
