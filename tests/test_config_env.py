"""``${NAME}`` references in config values: filled from the environment before
validation, so one ConfigMap gives every pod its own ids."""

from __future__ import annotations

import pathlib

import pytest

from streamweights.config import ConfigError, load_config
from streamweights.config_env import expand_environment

KAFKA = pathlib.Path(__file__).resolve().parents[1] / "configs" / "kafka.yaml"


def test_references_defaults_and_escapes():
    environ = {"POD_NAME": "streamweights-2", "EMPTY": ""}
    document = {"kafka": {"client": {"group_instance_id": "${POD_NAME}"},
                          "transactional_id": "sw-${POD_NAME}-${POD_NAME}"},
                "streams": [{"name": "${MISSING:-demo}", "note": "${EMPTY:-fallback}"}],
                "price": "$$5 and $HOME stays", "port": 9108, "flag": None}
    assert expand_environment(document, environ) == {
        "kafka": {"client": {"group_instance_id": "streamweights-2"},
                  "transactional_id": "sw-streamweights-2-streamweights-2"},
        "streams": [{"name": "demo", "note": "fallback"}],
        "price": "$5 and $HOME stays", "port": 9108, "flag": None}


def test_keys_are_never_expanded():
    assert expand_environment({"${A}": "x"}, {"A": "b"}) == {"${A}": "x"}


def test_an_unset_variable_names_the_field(tmp_path):
    text = KAFKA.read_text().replace("transactional_id: null",
                                     "transactional_id: streamweights-${POD_NAME}")
    path = tmp_path / "kafka.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith("kafka.transactional_id: environment variable "
                                        "POD_NAME is not set")
    config = load_config(path, environ={"POD_NAME": "streamweights-0"})
    assert config.kafka.transactional_id == "streamweights-streamweights-0"


def test_list_items_report_their_index():
    with pytest.raises(ValueError, match=r"^streams\[1\]\.name: environment variable X"):
        expand_environment({"streams": [{"name": "a"}, {"name": "${X}"}]}, {})


def test_load_config_reads_the_process_environment(tmp_path, monkeypatch):
    path = tmp_path / "demo.yaml"
    path.write_text((KAFKA.parent / "demo.yaml").read_text())
    monkeypatch.delenv("STREAMWEIGHTS_HTTP_HOST", raising=False)
    assert load_config(path).http_host == "127.0.0.1"
    monkeypatch.setenv("STREAMWEIGHTS_HTTP_HOST", "0.0.0.0")
    assert load_config(path).http_host == "0.0.0.0"
