"""Service configuration: the demo validates, and every error names the path of the bad
field so a user can fix a config without reading code."""

from __future__ import annotations

import copy
import datetime
import json
import os
import pathlib
import random
import subprocess
import sys
import time

import pytest

from streamweights.adapters import Chain, DriftMemory, FixedShare, OnlinePlatt
from streamweights.config import (
    MAX_CLASSES,
    MAX_INTEGER,
    STAGE_INTEGER_LIMITS,
    ConfigError,
    ServiceConfig,
    SourceConfig,
    StreamConfig,
    load_config,
    parse_config,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


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
    assert stream.adapters[0]["type"] == "Portfolio"  # the default: a portfolio of chains
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
    assert [spec["type"] for spec in stream.adapters] == ["Portfolio", "DriftMemory"]
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
    text = DEMO.read_text(encoding="utf-8").replace("{type: Portfolio}",
                                                    "{type: Portfolio, drift_share: 2}")
    assert "drift_share: 2" in text
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError,
                       match=r"^streams\[0\]\.adapters\[0\]\.drift_share: must be in "):
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


def test_the_second_of_two_duplicated_names_is_named():
    document = _document()
    first = document["streams"][0]
    document["streams"] = [first, dict(first, name="b"), dict(first, name="c"),
                           dict(first, name="b"), dict(first, name="fraud")]
    assert _error(document).startswith("streams: stream name 'b' appears twice")


def _many_streams(count, **stream_changes):
    document = _document(**stream_changes)
    stream = document["streams"][0]
    document["streams"] = [dict(copy.deepcopy(stream), name=f"s{i}") for i in range(count)]
    return document


def test_a_stage_shared_by_many_streams_is_built_once_to_validate_it(monkeypatch):
    import streamweights.config as config_module

    built = []
    real = config_module._build_stage

    def counting(spec, stream, path):
        built.append((spec["type"], path))
        return real(spec, stream, path)

    monkeypatch.setattr(config_module, "_build_stage", counting)
    config = parse_config(_many_streams(50))
    assert len(config.streams) == 50
    assert [kind for kind, _ in built] == ["FixedShare", "OnlinePlatt", "DriftMemory"]


_VALIDATED_ONCE = [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
                   {"type": "DriftMemory", "capacity": 1}]


@pytest.mark.parametrize(("second", "expected"), [
    # the same specs where the stream's sizes differ are validated again (and refused)
    ({"classes": 3}, "streams[1].adapters[1].type: OnlinePlatt calibrates binary"),
    # another option value is another stage
    ({"adapters": [{"type": "FixedShare", "share": 2.0}]}, "streams[1].adapters[0].share"),
    # so is an equal value of another type (True == 1, 1.0 == 1)
    ({"adapters": [*_VALIDATED_ONCE[:2], {"type": "DriftMemory", "capacity": True}]},
     "streams[1].adapters[2].capacity"),
    ({"adapters": [*_VALIDATED_ONCE[:2], {"type": "DriftMemory", "capacity": 1.0}]},
     "streams[1].adapters[2].capacity"),
])
def test_a_stage_that_differs_in_anything_is_validated_again(second, expected):
    document = _many_streams(2, adapters=copy.deepcopy(_VALIDATED_ONCE))
    document["streams"][1].update(second)
    assert _error(document).startswith(expected)


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


# -- hostile and broken configs: one line, a non-zero exit, never a traceback ------------
_BASE = """\
source: {kind: replay, events: 200, seed: 7, stream: demo}
state_dir: STATE
checkpoint: {every_records: 100, every_seconds: 30}
http: {host: 127.0.0.1, port: null}
outputs: {weights: OUT/weights.jsonl, dead_letter: OUT/dead.jsonl}
logging: {format: json, progress_every_seconds: 5}
streams:
  - name: demo
    task: classification
    classes: 2
    models: [logistic_regression, naive_bayes, hoeffding_tree]
    adapters:
      - {type: FixedShare, share: 0.01}
      - {type: OnlinePlatt}
      - {type: DriftMemory, capacity: 64, detector: adwin}
    join: {max_pending: 100000, ttl_seconds: 3600}
    publish: {every_labels: 1000, every_seconds: 60}
"""


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n" + _BASE


def _replace(old: str, new: str):
    def mutate(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return mutate


#: name -> (mutation of the base config's text, or its whole bytes; text the one-line error
#: must contain: the field's path or what is wrong)
MUTATIONS = {
    "alias_bomb": (lambda text: _alias_bomb(), "aliases"),
    "alias_cycle": (lambda text: "loop: &x [*x]\n" + text, "contains it"),
    "deep_nesting": (lambda text: "x: " + "[" * 5000 + "]" * 5000 + "\n" + text,
                     "nested deeper"),
    "deep_mapping": (lambda text: "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n" + text,
                     "nested deeper"),
    "non_utf8": (lambda text: text.encode().replace(b"name: demo", b"name: d\xffmo"),
                 "not UTF-8"),
    "latin1_comment": (lambda text: b"# caf\xe9\n" + text.encode(), "not UTF-8"),
    "too_large": (lambda text: text + "#" * (1024 * 1024 + 10) + "\n", "larger than"),
    "not_yaml": (lambda text: text + "streams: [\n", "not valid YAML"),
    "python_tag": (lambda text: text.replace("state_dir: STATE", "state_dir: !!python/object/"
                                             "apply:os.system ['echo pwned']"),
                   "not valid YAML"),
    "duplicate_key": (lambda text: text + "state_dir: elsewhere\n", "appears twice"),
    "huge_int_in_float_field": (_replace("ttl_seconds: 3600", "ttl_seconds: 1" + "0" * 400),
                                "streams[0].join.ttl_seconds"),
    "infinite_float_field": (_replace("every_seconds: 30", "every_seconds: .inf"),
                             "checkpoint.every_seconds"),
    "huge_int_in_adapter_float": (_replace("share: 0.01", "share: 1" + "0" * 400),
                                  "streams[0].adapters[0].share"),
    "nan_in_adapter": (_replace("share: 0.01", "share: .nan"),
                       "streams[0].adapters[0].share"),
    "mapping_as_type": (_replace("type: OnlinePlatt", "type: {a: 1}"),
                        "streams[0].adapters[1].type"),
    "list_as_type": (_replace("type: FixedShare", "type: [FixedShare]"),
                     "streams[0].adapters[0].type"),
    "capacity_1e12": (_replace("capacity: 64", "capacity: 1e12"),
                      "streams[0].adapters[2].capacity"),
    "capacity_huge_int": (_replace("capacity: 64", "capacity: 1000000000000"),
                          "streams[0].adapters[2].capacity"),
    "detector_option_huge": (_replace("detector: adwin}",
                                      "detector: adwin, detector_options: {clock: 1" + "0" * 30
                                      + "}}"),
                             "detector_options.clock"),
    "max_pending_1e30": (_replace("max_pending: 100000", "max_pending: 1e30"),
                         "streams[0].join.max_pending"),
    "max_pending_float_1e30": (_replace("max_pending: 100000", "max_pending: 1.0e+30"),
                               "streams[0].join.max_pending"),
    "capacity_float_1e12": (_replace("capacity: 64", "capacity: 1.0e+12"),
                            "streams[0].adapters[2].capacity"),
    "every_records_huge": (_replace("every_records: 100", "every_records: 1" + "0" * 25),
                           "checkpoint.every_records"),
    "publish_every_seconds_huge": (_replace("every_seconds: 60", "every_seconds: 1" + "0" * 320),
                                   "streams[0].publish.every_seconds"),
    "max_pending_huge_int": (_replace("max_pending: 100000", "max_pending: 1" + "0" * 30),
                             "streams[0].join.max_pending"),
    "events_20_digits": (_replace("events: 200", "events: 12345678901234567890"),
                         "source.events"),
    "events_5000_digits": (_replace("events: 200", "events: " + "9" * 5000),
                           "cannot be read"),
    "seed_beyond_2_53": (_replace("seed: 7", "seed: 9007199254740992"), "source.seed"),
    "classes_huge": (_replace("classes: 2", "classes: 100000000000"), "streams[0].classes"),
    "top_level_list": (lambda text: "- a\n- b\n", "config: expected a mapping"),
    "top_level_scalar": (lambda text: "just words\n", "config: expected a mapping"),
    "empty_file": (lambda text: "", "streams"),
    "integer_key": (lambda text: text + "1: 2\n", "setting names are text"),
    "streams_as_mapping": (_replace("streams:\n  - name: demo", "streams:\n  x:\n    name: demo"),
                           "streams"),
    "port_out_of_range": (_replace("port: null", "port: 70000"), "http.port"),
    "port_as_text": (_replace("port: null", "port: http"), "http.port"),
    "dotdot_stream_name": (lambda text: text.replace("stream: demo", "stream: '..'")
                           .replace("name: demo", "name: '..'"), "streams[0].name"),
    "bad_timestamp_value": (_replace("state_dir: STATE", "state_dir: 2001-13-45"),
                            "cannot be read"),
    "unset_environment_variable": (_replace("state_dir: STATE", "state_dir: ${SW_TEST_UNSET}"),
                                   "state_dir: environment variable SW_TEST_UNSET"),
    "replay_stream_not_configured": (_replace("stream: demo}", "stream: other}"),
                                     "source.stream"),
    "unknown_scenario": (_replace("kind: replay,", "kind: replay, scenario: nope,"),
                         "source.scenario"),
    "missing_token_file": (_replace("port: null}", "port: null, token_file: NOWHERE}"),
                           "http.token_file"),
    "weights_output_is_a_folder": (_replace("OUT/weights.jsonl", "OUT"), "outputs.weights"),
    "state_dir_is_a_file": (_replace("state_dir: STATE", "state_dir: FILE"), "state_dir"),
}


def _cli(*args: str, cwd: pathlib.Path) -> tuple[int, str, float]:
    environment = {k: v for k, v in os.environ.items() if k != "SW_TEST_UNSET"}
    environment["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "streamweights", *args], capture_output=True,
                            text=True, env=environment, cwd=cwd, timeout=120)
    return result.returncode, result.stderr, time.monotonic() - started


#: Runs ``streamweights.cli.main(ARGS)`` for each line of JSON argument lists on stdin in
#: one interpreter (a fresh one per config costs ~1 s of imports), with stderr captured
#: per call; an exception escaping ``main`` is printed as the interpreter would (a
#: traceback). Writes one JSON result per call.
_DRIVER = """
import contextlib, io, json, sys, time, traceback
from streamweights.cli import main
for line in sys.stdin:
    args = json.loads(line)
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    print(json.dumps([code, err.getvalue(), time.monotonic() - started]), flush=True)
"""


def _cli_batch(calls: list[list[str]], cwd: pathlib.Path) -> list[tuple[int, str, float]]:
    environment = {k: v for k, v in os.environ.items() if k != "SW_TEST_UNSET"}
    environment["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", _DRIVER], capture_output=True, text=True,
                            env=environment, cwd=cwd, timeout=600,
                            input="".join(json.dumps(args) + "\n" for args in calls))
    assert result.returncode == 0, result.stderr[-2000:]
    return [tuple(json.loads(line)) for line in result.stdout.splitlines()]


def _write_mutations(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    (tmp_path / "out").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    places = {"STATE": tmp_path / "state", "OUT": tmp_path / "out",
              "NOWHERE": tmp_path / "no-token", "FILE": tmp_path / "a-file"}
    paths = {}
    for name, (mutate, _) in MUTATIONS.items():
        content = mutate(_BASE)
        data = content if isinstance(content, bytes) else content.encode()
        for placeholder, place in places.items():
            data = data.replace(placeholder.encode(), str(place).encode())
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_bytes(data)
    return paths


def _check(name: str, command: str, code: int, stderr: str, seconds: float) -> str | None:
    lines = stderr.strip().splitlines()
    if (code == 0 or "Traceback" in stderr or len(lines) != 1
            or MUTATIONS[name][1] not in stderr or seconds > 30):
        return f"{command} {name}: exit {code}, {seconds:.1f}s, stderr {stderr.strip()[-400:]!r}"
    return None


def test_every_broken_config_is_one_line_from_validate_and_from_run(tmp_path):
    """Scenario: ~40 kinds of broken or hostile config (alias bomb, deep nesting, non-UTF-8,
    huge integers in float fields, a mapping as `type:`, capacity 1e12, max_pending 1e30, a
    20-digit events, settings only start-up used to check ...), each given to the CLI's
    entry point as `validate FILE` and as `run --config FILE`.
    We expect: both exit non-zero with exactly one line on stderr that names the field (or
    says what is wrong), never a traceback, and fast (the alias bomb expanded for 23 s and
    1.4 GB before); so whatever `run` refuses at start-up, `validate` refuses too; no
    record and no snapshot is written."""
    paths = _write_mutations(tmp_path)
    calls = [(name, command) for command in ("validate", "run") for name in MUTATIONS]
    results = _cli_batch([["validate", str(paths[name])] if command == "validate" else
                          ["run", "--config", str(paths[name]), "--no-http"]
                          for name, command in calls], tmp_path)
    assert len(results) == len(calls)
    failures = [_check(name, command, *result) for (name, command), result in
                zip(calls, results, strict=True)]
    assert not [f for f in failures if f], "\n".join(f for f in failures if f)
    assert (tmp_path / "a-file").read_text() == "not a folder"
    assert all(f.stat().st_size == 0 for f in (tmp_path / "out").iterdir()), \
        "a refused config wrote outputs"
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("name", ["alias_bomb", "deep_nesting", "non_utf8",
                                  "huge_int_in_float_field", "mapping_as_type",
                                  "max_pending_huge_int", "events_20_digits",
                                  "replay_stream_not_configured"])
def test_broken_configs_through_the_real_command_line(tmp_path, name):
    """The same, for the crashes the issue names, through `python -m streamweights` in
    its own process (stderr and exit code as a shell sees them)."""
    path = _write_mutations(tmp_path)[name]
    for args in (["validate", str(path)], ["run", "--config", str(path), "--no-http"]):
        failure = _check(name, args[0], *_cli(*args, cwd=tmp_path))
        assert failure is None, failure


def test_the_valid_base_config_validates_and_runs(tmp_path):
    """The base the mutations start from is valid (so each mutation is what fails)."""
    path = tmp_path / "base.yaml"
    path.write_text(_BASE.replace("STATE", str(tmp_path / "state"))
                    .replace("OUT", str(tmp_path / "out")))
    code, stderr, _ = _cli("validate", str(path), cwd=tmp_path)
    assert code == 0, stderr
    code, stderr, _ = _cli("run", "--config", str(path), "--no-http", cwd=tmp_path)
    assert code == 0, stderr
    assert (tmp_path / "out" / "weights.jsonl").stat().st_size > 0


def test_an_alias_bomb_is_refused_in_milliseconds(tmp_path):
    """The 1.9 KB 'billion laughs' file is refused before anything expands it."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)
    assert time.perf_counter() - started < 0.5


def test_aliases_and_merge_keys_within_bounds_still_work(tmp_path):
    """Anchors are a normal YAML tool: a shared adapter spec and a `<<:` merge load."""
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "platt: &platt {type: OnlinePlatt}\n"
        "streams:\n"
        "  - &stream {name: a, models: [m1, m2], adapters: [{type: Hedge}, *platt]}\n"
        "  - {<<: *stream, name: b}\n".replace("platt: &platt", "x-platt: &platt"))
    with pytest.raises(ConfigError, match="x-platt: unknown setting"):
        load_config(path)  # unknown top-level keys stay refused, anchors or not
    path.write_text(path.read_text().replace("x-platt: &platt {type: OnlinePlatt}\n", "")
                    .replace("*platt", "&platt {type: OnlinePlatt}"))
    config = load_config(path)
    assert [s.name for s in config.streams] == ["a", "b"]
    assert config.streams[1].adapters == config.streams[0].adapters


def test_bounds_name_their_limits():
    """Integers beyond the documented bounds are refused with the bound in the message."""
    document = _document()
    document["source"] = {"kind": "replay", "events": MAX_INTEGER + 1}
    assert "source.events: must be at most 9,007,199,254,740,991" in _error(document)
    assert f"at most {MAX_CLASSES:,}" in _error(_document(classes=MAX_CLASSES + 1))
    stages = [{"type": "FixedShare"}, {"type": "OnlinePlatt"},
              {"type": "DriftMemory", "capacity": STAGE_INTEGER_LIMITS["capacity"] + 1}]
    assert "adapters[2].capacity: must be at most 100,000" in _error(_document(adapters=stages))


_HOSTILE_VALUES = [None, True, 0, -1, 1, 2**53, 2**64, 10**400, -(10**30), 0.5, -0.0, 1e308,
                   float("inf"), float("-inf"), float("nan"), "", "x", "1e12", "..", "\udc80",
                   "a" * 10_000, [], [1, 2], [[[]]], {}, {"type": {}}, {"a": {"b": {}}},
                   {1: 2}, {None: 1}, {"type": "Hedge"}, datetime.date(2001, 12, 14),
                   b"\xff\xfe"]


def _leaves(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, index))


def _mutated(document, rng: random.Random):
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        paths = list(_leaves(document))
        path = rng.choice(paths[1:])
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        choice = rng.random()
        if choice < 0.7:
            parent[path[-1]] = copy.deepcopy(rng.choice(_HOSTILE_VALUES))
        elif choice < 0.85 and isinstance(parent, dict):
            parent[rng.choice(["type", "share", "capacity", "classes", "extra", 1, None])] = \
                copy.deepcopy(rng.choice(_HOSTILE_VALUES))
        elif isinstance(parent, dict):
            del parent[path[-1]]
    return document


def test_mutated_documents_only_ever_raise_config_error():
    """Seeded fuzz over the validator: 3,000 copies of a valid document, each with 1-3
    values replaced by hostile ones (huge and non-finite numbers, wrong types, nested
    containers, surrogates, bytes, dates) or keys added or removed.
    We expect: each one validates or raises ConfigError with a one-line message; no other
    exception (before: OverflowError, TypeError, MemoryError, RecursionError ...)."""
    base = {**_document(), "checkpoint": {"every_records": 100, "every_seconds": 5.0},
            "http": {"host": "127.0.0.1", "port": None}, "outputs": {"weights": "w.jsonl"}}
    base["streams"][0]["join"] = {"max_pending": 1000, "ttl_seconds": 60.0}
    base["streams"][0]["publish"] = {"every_labels": 10, "every_seconds": 5.0}
    rng = random.Random(12)
    outcomes = {"valid": 0, "refused": 0}
    for _ in range(3_000):
        document = _mutated(base, rng)
        try:
            parse_config(document)
            outcomes["valid"] += 1
        except ConfigError as error:
            assert "\n" not in str(error) and len(str(error)) < 1_000, str(error)[:300]
            outcomes["refused"] += 1
    assert outcomes["refused"] > 2_000 and outcomes["valid"] > 0, outcomes


def test_mutated_yaml_text_only_ever_raises_config_error(tmp_path):
    """Seeded fuzz over the reader: 2,000 byte-level mutations of the base config's text
    (bytes replaced, inserted, deleted; YAML punctuation favoured) read with load_config.
    We expect: a ServiceConfig or a one-line ConfigError, nothing else."""
    text = _BASE.replace("STATE", str(tmp_path / "s")).replace("OUT", str(tmp_path / "o"))
    data = text.encode()
    rng = random.Random(5)
    alphabet = b"{}[]:,-&*!|>'\"#%@`?\\\n\t 0123456789eE.+x\xff\xc3"
    path = tmp_path / "fuzz.yaml"
    refused = 0
    for _ in range(2_000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(mutated))
            operation = rng.random()
            if operation < 0.4:
                mutated[position] = rng.choice(alphabet)
            elif operation < 0.7:
                mutated.insert(position, rng.choice(alphabet))
            else:
                del mutated[position]
        path.write_bytes(bytes(mutated))
        try:
            load_config(path, environ={})
        except ConfigError as error:
            assert "\n" not in str(error), str(error)[:300]
            refused += 1
    assert refused > 500


def test_a_torch_model_too_large_to_build_is_a_config_error(tmp_path):
    """A torch stream whose factory options ask for terabytes: building the pipeline (as
    validate and run's start-up do) is a one-line ConfigError naming the torch block, not
    torch's RuntimeError."""
    from streamweights.pipeline import Pipeline

    weights = tmp_path / "cnn.pt"
    weights.write_bytes(b"")
    document = {"source": {"kind": "jsonl", "path": "-"}, "streams": [{
        "name": "digits", "classes": 10, "models": ["cnn"], "adapters": [{"type": "FixedShare"}],
        "torch": {"model": "cnn", "factory": "streamweights.adapters.torch.examples:small_cnn",
                  "factory_options": {"n_classes": 10**11}, "state_dict": str(weights),
                  "input_shape": [1, 8, 8]}}]}
    config = parse_config(document)
    with pytest.raises(ConfigError, match=r"^streams\[digits\]\.torch: cannot build the model "
                                          r"\(RuntimeError: .*allocate"):
        Pipeline(config.streams)


def test_kafka_mode_checkpoints_every_100_ms_unless_told_otherwise():
    """Scenario: a Kafka config with no ``checkpoint`` block, one with its own, and an
    embedded config with none. We expect: Kafka mode's own defaults (10,000 records or
    0.1 s: the embedded 30 s would outlive the producer's 10 s transaction timeout), the
    given values where given, and the embedded defaults (20,000 records or 30 s)."""
    kafka = {**_document(), "source": {"kind": "kafka"},
             "kafka": {"bootstrap_servers": "broker:9092"}}
    config = parse_config(kafka)
    assert (config.checkpoint_every_records, config.checkpoint_every_seconds) == (10_000, 0.1)
    given = parse_config({**kafka, "checkpoint": {"every_records": 500, "every_seconds": 2}})
    assert (given.checkpoint_every_records, given.checkpoint_every_seconds) == (500, 2.0)
    embedded = parse_config(_document())
    assert (embedded.checkpoint_every_records,
            embedded.checkpoint_every_seconds) == (20_000, 30.0)
