"""Service configuration: the demo validates, and every error names the path of the bad
field so a user can fix a config without reading code."""

from __future__ import annotations

import copy
import pathlib

import pytest

from streamweights.adapters import Chain, DriftMemory, FixedShare, OnlinePlatt
from streamweights.config import (
    ConfigError,
    ServiceConfig,
    SourceConfig,
    StreamConfig,
    load_config,
    parse_config,
)

DEMO = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _document(**stream_changes):
    stream = {"name": "fraud", "task": "classification", "classes": 2,
              "models": ["gbm", "mlp", "tree"],
              "adapters": [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
                           {"type": "DriftMemory", "capacity": 16}]}
    stream.update(stream_changes)
    return {"source": {"kind": "replay"}, "streams": [stream]}


def _error(document) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


# -- what validates ------------------------------------------------------------------
def test_demo_config_validates():
    config = load_config(DEMO)
    assert isinstance(config, ServiceConfig)
    assert isinstance(config.source, SourceConfig)
    assert config.source.kind == "replay"
    assert config.source.events >= 50_000  # the demo size
    (stream,) = config.streams
    assert isinstance(stream, StreamConfig)
    assert stream.name == config.source.stream
    assert stream.task == "classification" and stream.n_classes == 2
    assert len(stream.models) >= 3
    assert stream.adapters[0]["type"] in ("Hedge", "FixedShare", "OnlineStacking")
    chain = stream.build_chain()
    assert isinstance(chain, Chain)
    assert [type(s).__name__ for s in chain.stages] == [a["type"] for a in stream.adapters]


def test_stream_sizes_are_filled_in_from_the_stream():
    config = parse_config(_document())
    ensemble, platt, memory = config.streams[0].build_chain().stages
    assert isinstance(ensemble, FixedShare) and isinstance(platt, OnlinePlatt)
    assert isinstance(memory, DriftMemory)
    assert (ensemble.n_models, ensemble.n_classes, ensemble.share) == (3, 2, 0.01)
    assert (memory.n_classes, memory.capacity) == (2, 16)


def test_defaults_when_settings_are_left_out():
    config = parse_config({"streams": [{"name": "s", "models": ["a"]}]})
    stream = config.streams[0]
    assert stream.task == "classification" and stream.n_classes == 2
    assert [spec["type"] for spec in stream.adapters] == ["FixedShare"]
    assert stream.react_to_drift
    assert config.source == SourceConfig()


def test_build_chain_gives_fresh_independent_chains():
    stream = parse_config(_document()).streams[0]
    first, second = stream.build_chain(), stream.build_chain()
    assert first is not second and first.stages[0] is not second.stages[0]


def _regression(**changes):
    document = _document(**{"task": "regression", "adapters": [{"type": "Hedge"}], **changes})
    del document["streams"][0]["classes"]
    return document


def test_regression_stream_with_one_ensemble_stage():
    stream = parse_config(_regression()).streams[0]
    assert stream.task == "regression" and stream.n_classes is None
    assert stream.build_chain().stages[0].n_models == 3


def test_regression_stream_has_no_classes():
    document = _regression()
    document["streams"][0]["classes"] = 2
    assert _error(document).startswith("streams[0].classes: only classification streams")


def test_load_config_reports_unreadable_and_invalid_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("streams: [\n  - {name: a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_load_config_error_names_the_path_from_a_file(tmp_path):
    text = DEMO.read_text(encoding="utf-8").replace("share: 0.01", "share: 2")
    assert "share: 2" in text
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^streams\[0\]\.adapters\[0\]\.share: must be in "):
        load_config(path)


# -- adapter hyper-parameters: the adapter's message behind the stage's path ----------------
def test_bad_share_names_the_stage_path_and_keeps_the_adapters_message():
    """Scenario: a FixedShare with share 2. We expect: exactly the adapter's own message
    ("share: must be in (0, 1) ...") behind the stage's path."""
    with pytest.raises(ValueError) as adapter_error:
        FixedShare(n_models=3, n_classes=2, share=2)
    adapter_message = str(adapter_error.value)
    assert adapter_message.startswith("share: must be in (0")
    message = _error(_document(adapters=[{"type": "FixedShare", "share": 2},
                                         {"type": "OnlinePlatt"}]))
    assert message == f"streams[0].adapters[0].{adapter_message}"
    assert message.startswith("streams[0].adapters[0].share: must be in (0")
    assert message.endswith("got 2")


def test_bad_option_of_a_later_stage_names_its_index():
    message = _error(_document(adapters=[{"type": "FixedShare"}, {"type": "OnlinePlatt"},
                                         {"type": "DriftMemory", "capacity": 0}]))
    assert message.startswith("streams[0].adapters[2].capacity: must be")
    message = _error(_document(adapters=[{"type": "FixedShare"},
                                         {"type": "DriftMemory", "capacity": 8,
                                          "detector": "cusum"}]))
    assert message.startswith("streams[0].adapters[1].detector: must be one of")


def test_path_names_the_stream_by_position():
    document = _document()
    second = copy.deepcopy(document["streams"][0])
    second["name"] = "other"
    second["adapters"] = [{"type": "Hedge", "learning_rate": -1}]
    document["streams"].append(second)
    assert _error(document).startswith("streams[1].adapters[0].learning_rate:")


def test_missing_required_option_names_it():
    message = _error(_document(adapters=[{"type": "FixedShare"}, {"type": "DriftMemory"}]))
    assert message == "streams[0].adapters[1].capacity: required option for DriftMemory"


def test_unknown_adapter_type():
    message = _error(_document(adapters=[{"type": "FixedShare"}, {"type": "Platypus"}]))
    assert message.startswith("streams[0].adapters[1].type: unknown adapter 'Platypus'")
    assert "OnlinePlatt" in message  # says what is known
    assert "Chain" not in message.split("known:")[1]  # a chain is not a stage


def test_chain_is_not_a_stage():
    message = _error(_document(adapters=[{"type": "FixedShare"}, {"type": "Chain"}]))
    assert message.startswith("streams[0].adapters[1].type: unknown adapter 'Chain'")


def test_unknown_option():
    message = _error(_document(adapters=[{"type": "FixedShare", "shares": 0.1}]))
    assert message.startswith("streams[0].adapters[0].shares: unknown option for FixedShare")
    assert "share" in message.split("options:")[1]  # lists the real ones


def test_sizes_set_by_the_stream_cannot_be_repeated():
    message = _error(_document(adapters=[{"type": "FixedShare", "n_models": 3}]))
    assert message.startswith("streams[0].adapters[0].n_models: set by the stream")
    message = _error(_document(adapters=[{"type": "FixedShare"},
                                         {"type": "DriftMemory", "capacity": 8,
                                          "n_classes": 2}]))
    assert message.startswith("streams[0].adapters[1].n_classes: set by the stream")


def test_stage_must_be_a_mapping_with_a_type():
    for bad in ("FixedShare", {"share": 0.1}):
        message = _error(_document(adapters=[bad]))
        assert message.startswith("streams[0].adapters[0]: expected a mapping with a 'type'")


@pytest.mark.parametrize("first", ["OnlinePlatt", "DriftMemory", "PriorShift"])
def test_first_stage_must_be_an_ensemble(first):
    stage = {"type": first, "capacity": 8} if first == "DriftMemory" else {"type": first}
    message = _error(_document(adapters=[stage]))
    assert message.startswith("streams[0].adapters[0].type: the first stage combines")
    assert repr(first) in message


def test_ensemble_only_as_the_first_stage():
    message = _error(_document(adapters=[{"type": "FixedShare"}, {"type": "Hedge"}]))
    assert message.startswith("streams[0].adapters[1].type: Hedge combines models")


@pytest.mark.parametrize("calibrator", ["OnlinePlatt", "OnlineBetaScaling", "Calibeating"])
def test_binary_calibrator_on_a_three_class_stream(calibrator):
    message = _error(_document(classes=3, adapters=[{"type": "FixedShare"},
                                                    {"type": calibrator}]))
    assert message.startswith(f"streams[0].adapters[1].type: {calibrator} calibrates binary")
    assert "OnlineTemperature" in message  # says what to use instead


def test_three_class_stream_with_temperature_validates():
    config = parse_config(_document(classes=3, adapters=[{"type": "FixedShare"},
                                                         {"type": "OnlineTemperature"}]))
    assert config.streams[0].build_chain().stages[0].n_classes == 3


def test_duplicate_stream_names():
    document = _document()
    document["streams"].append(copy.deepcopy(document["streams"][0]))
    message = _error(document)
    assert message.startswith("streams: stream name 'fraud' appears twice")


@pytest.mark.parametrize(("changes", "prefix"), [
    ({"classes": "two"}, "streams[0].classes: expected int, got str 'two'"),
    ({"classes": True}, "streams[0].classes: expected int, got bool"),
    ({"classes": 2.0}, "streams[0].classes: expected int, got float"),
    ({"classes": 1}, "streams[0].classes: must be >= 2"),
    ({"name": 7}, "streams[0].name: expected str"),
    ({"models": "gbm"}, "streams[0].models: expected list"),
    ({"models": []}, "streams[0].models: must be a non-empty list"),
    ({"models": ["a", ""]}, "streams[0].models: must be a non-empty list"),
    ({"models": ["a", "a"]}, "streams[0].models: model names must be unique"),
    ({"adapters": {"type": "FixedShare"}}, "streams[0].adapters: expected list"),
    ({"task": "ranking"}, "streams[0].task: must be one of"),
    ({"on_drift": "panic"}, "streams[0].on_drift: must be 'react' or 'ignore'"),
    ({"join": {"max_pending": 0}}, "streams[0].join.max_pending: must be >= 1"),
    ({"join": {"max_pending": "many"}}, "streams[0].join.max_pending: expected int"),
    ({"join": {"ttl_seconds": -5}}, "streams[0].join.ttl_seconds: must be a positive number"),
    ({"join": {"ttl_seconds": float("inf")}},
     "streams[0].join.ttl_seconds: must be a positive number"),
    ({"join": {"ttl": 5}}, "streams[0].join.ttl: unknown setting"),
    ({"join": [1]}, "streams[0].join: expected dict"),
    ({"publish": {"every_labels": 0}}, "streams[0].publish.every_labels: must be >= 1"),
    ({"publish": {"every_seconds": "1m"}}, "streams[0].publish.every_seconds: expected float"),
    ({"colour": "red"}, "streams[0].colour: unknown setting"),
])
def test_wrong_stream_settings_name_their_path(changes, prefix):
    message = _error(_document(**changes))
    assert message.startswith(prefix), message


def test_missing_stream_name_is_required():
    document = _document()
    del document["streams"][0]["name"]
    assert _error(document) == "streams[0].name: required"


def test_regression_stream_takes_a_single_stage():
    message = _error(_regression(adapters=[{"type": "FixedShare"}, {"type": "OnlinePlatt"}]))
    assert message == "streams[0].adapters[1]: regression streams take a single ensemble stage"


@pytest.mark.parametrize(("document", "prefix"), [
    ({**_document(), "colour": "red"}, "colour: unknown setting"),
    ({**_document(), "http": {"prot": 1}}, "http.prot: unknown setting"),
    ({**_document(), "http": {"port": 70000}}, "http.port: must be in 0..65535"),
    ({**_document(), "http": {"port": "9108"}}, "http.port: expected int"),
    ({**_document(), "checkpoint": {"every_records": 0}},
     "checkpoint.every_records: must be >= 1"),
    ({**_document(), "logging": {"format": "xml"}}, "logging.format: must be 'text' or 'json'"),
    ({**_document(), "outputs": {"weights": 3}}, "outputs.weights: expected str"),
    ({**_document(), "state_dir": ["a"]}, "state_dir: expected str"),
    ({**_document(), "source": {"kind": "kinesis"}}, "source.kind: must be one of"),
    ({**_document(), "source": {"kind": "kafka"}}, "kafka: required for source.kind 'kafka'"),
    ({**_document(), "kafka": {"bootstrap_servers": "h:9092"}}, "kafka: only used with"),
    ({**_document(), "source": {"kind": "kafka"}, "kafka": {}}, "kafka.bootstrap_servers: "
     "required"),
    ({**_document(), "source": {"kind": "kafka"},
      "kafka": {"bootstrap_servers": "h:9092", "partitons": 3}}, "kafka.partitons: unknown"),
    ({**_document(), "source": {"events": 0}}, "source.events: must be >= 1"),
    ({**_document(), "source": {"evnts": 10}}, "source.evnts: unknown setting"),
    ({**_document(), "source": {"kind": "csv"}}, "source.path: required"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv"}},
     "source.label_column: required"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv", "label_column": "y",
                                "label_delay": "gamma"}}, "source.label_delay: must be one of"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv", "label_column": "y",
                                "label_time_column": "t"}}, "source.label_time_column: set it"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv", "label_column": "y",
                                "label_delay": "column", "label_time_column": "t"}},
     "source.timestamp_column: required with source.label_time_column"),
    ({**_document(), "source": {"kind": "parquet", "path": "x.parquet", "label_column": "y",
                                "classes": [1]}}, "source.classes: list at least two"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv", "label_column": "y",
                                "classes": [0, [1]]}}, "source.classes[1]: expected a label"),
    ({**_document(), "source": {"kind": "csv", "path": "x.csv", "label_column": "y",
                                "train_rows": 0}}, "source.train_rows: must be >= 1"),
    ({**_document(), "source": {"kind": "replay", "classes": [0, 1]}},
     "source.classes: only used with source.kind csv or parquet"),
    ({**_document(), "source": "replay"}, "source: expected dict"),
    ({"streams": []}, "streams: at least one stream is required"),
    ({}, "streams: at least one stream is required"),
    ({"streams": [["fraud"]]}, "streams[0]: expected a mapping"),
    ([1, 2], "config: expected a mapping"),
])
def test_wrong_top_level_settings_name_their_path(document, prefix):
    message = _error(document)
    assert message.startswith(prefix), message


def test_http_port_may_be_null_or_zero():
    assert parse_config({**_document(), "http": {"port": None}}).http_port is None
    assert parse_config({**_document(), "http": {"port": 0}}).http_port == 0


def test_a_later_stage_must_map_probabilities_to_probabilities():
    document = _document(adapters=[{"type": "FixedShare"},
                                   {"type": "KalmanWeights", "n_features": 4}])
    message = _error(document)
    assert message.startswith("streams[0].adapters[1].type: after the ensemble come stages")
    assert "KalmanWeights" in message
