"""A table replay into a stream that declares ``features``: the default portfolio's
feature candidate learns from the rows' feature columns, and a count that disagrees with
the file is a start-up error naming the field."""

from __future__ import annotations

import pytest

from streamweights import events
from streamweights.config import SourceConfig, parse_config
from streamweights.pipeline import Pipeline
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.preflight import check_source_matches_streams
from streamweights.runtime.sources import make_source
from tests.service.test_csv_source import MODELS, sea_rows, write_csv


def test_declared_features_feed_the_default_portfolio_and_must_match_the_file(tmp_path):
    """Scenario: a SEA table (3 feature columns) whose concept changes after training,
    replayed into a stream with default adapters. We expect: with ``features: 3`` every
    record accepted and the feature candidate carrying weight after the change; with
    ``features: 4`` a start-up error naming streams[demo].features and the columns."""
    path = write_csv(tmp_path / "sea.csv", sea_rows(5000, change_at=3000))
    source = make_source(SourceConfig(kind="csv", path=path, label_column="target",
                                      timestamp_column="when", train_rows=1500,
                                      stream="demo"))

    def pipeline(n_features: int) -> Pipeline:
        (config,) = parse_config({"streams": [{"name": "demo", "models": MODELS,
                                               "features": n_features}]}).streams
        return Pipeline([config])

    with pytest.raises(RuntimeSetupError, match=r"^streams\[demo\]\.features: 4, but .* has "
                                                r"3 feature columns \['f0', 'f1', 'f2'\]"):
        check_source_matches_streams(source, pipeline(4))
    served = pipeline(3)
    check_source_matches_streams(source, served)
    for _, raw in source.replay.records():
        outcome = served.process(events.decode(raw))
        assert not outcome.dead_letters, outcome.dead_letters[0].error
    portfolio = served.streams["demo"].chain.stages[0]
    assert portfolio.n_features == 3
    weights = portfolio.candidate_weights()
    feature = "FixedShare->OnlinePlatt->FeatureCorrection->Calibeating"
    assert weights[feature] == max(weights.values())
