"""A stream that declares a torch model: config, pipeline and service wiring (issue 5).

Predictions carry the model's input as ``features``; the service runs the model, adapts
it (test time + Kalman head), exports versions to the artifact store and serves them."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import orjson
import pytest
import torch
import yaml

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.adapters.torch.examples import small_cnn
from streamweights.adapters.torch.weights_file import decode_weights, load_into_model
from streamweights.config import ConfigError, load_config, parse_config
from streamweights.events import Label, Prediction
from streamweights.pipeline import Pipeline
from streamweights.runtime.service import Service
from tests.torch import digits

LABEL_DELAY = 20  # a label arrives 20 records after its prediction


@pytest.fixture(scope="module")
def model_file(digit_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits-cnn.pt"
    torch.save(digit_model.state_dict(), path)
    return path


def torch_stream(model_file, **overrides):
    block = {"factory": "streamweights.adapters.torch.examples:small_cnn",
             "state_dict": str(model_file), "input_shape": [1, 8, 8],
             "test_time": {"update_every": 16}, "kalman_head": {},
             "export": {"every_updates": 40}}
    block.update(overrides)
    return {"name": "digits", "classes": 10, "models": ["cnn"], "torch": block,
            "adapters": [{"type": "FixedShare"}], "publish": {"every_labels": 100}}


def records(images, labels, start_ts=1000.0):
    """Predictions with the flattened image as features; each label LABEL_DELAY later."""
    out = []
    for index, image in enumerate(images):
        out.append(Prediction("digits", f"e{index}", start_ts + index, {},
                               image.reshape(-1).tolist()))
        if index >= LABEL_DELAY:
            late = index - LABEL_DELAY
            out.append(Label("digits", f"e{late}", start_ts + index, int(labels[late])))
    return out


def run(pipeline, stream):
    adapted, weights, artifacts = [], [], []
    for record in stream:
        outcome = pipeline.process(record)
        assert not outcome.dead_letters, outcome.dead_letters
        if outcome.adapted is not None:
            adapted.append(outcome.adapted.proba)
        weights.extend(outcome.weights)
        artifacts.extend(outcome.artifacts)
    return adapted, weights, artifacts


def test_pipeline_serves_adapts_exports_and_restores_exactly(model_file, digit_split):
    """Scenario: 400 blurred digits through a torch stream's pipeline (test-time
    adaptation, Kalman head, export every 40 updates); a second pipeline is snapshotted
    halfway through the JSON state codec, restored into a third, which finishes.
    We expect: served probabilities beat the frozen model; weights records name each
    exported file by version, digest and location, and the bytes decode under that
    digest; the restored run equals the uninterrupted one bit for bit."""
    _, _, test_x, test_y = digit_split
    images, labels = digits.corrupted_stream(test_x[:400], test_y[:400], "blur", (4,), seed=3)
    stream = records(images, labels)
    config = parse_config({"streams": [torch_stream(model_file)]})
    adapted, weights, artifacts = run(Pipeline(config.streams), stream)
    served = np.array(adapted)
    frozen = small_cnn(n_classes=10)
    load_into_model(frozen, {k: v.numpy() for k, v in torch.load(model_file).items()})
    with torch.no_grad():
        frozen_accuracy = digits.accuracy(frozen.eval()(torch.from_numpy(images)).numpy(),
                                          labels)
    assert digits.accuracy(served, labels) > frozen_accuracy + 0.05
    assert len(artifacts) >= 3
    with_files = [w for w in weights if w.artifact is not None]
    for artifact in artifacts:
        record = next(w for w in with_files if w.version == artifact.version)
        assert record.artifact["digest"] == artifact.digest
        assert record.artifact["location"] == f"digits/{artifact.version:010d}.safetensors"
        assert "tensors" not in record.to_json()["artifact"]
        decode_weights(artifact.data, record.artifact["digest"])

    first = Pipeline(config.streams)
    half = len(stream) // 2
    run(first, stream[:half])
    snapshot = loads_state(dumps_state(first.state_dict()))
    restored = Pipeline(config.streams)
    restored.load_state_dict(snapshot)
    rest_adapted, _, rest_artifacts = run(restored, stream[half:])
    assert np.array_equal(np.array(rest_adapted), served[-len(rest_adapted):])
    assert rest_artifacts
    uninterrupted = {a.version: a.digest for a in artifacts}
    assert all(uninterrupted[a.version] == a.digest for a in rest_artifacts)


def test_bad_torch_records_become_dead_letters(model_file):
    config = parse_config({"streams": [torch_stream(model_file)]})
    pipeline = Pipeline(config.streams)
    missing = pipeline.process(Prediction("digits", "a", 1.0, {}, None))
    assert missing.dead_letters[0].reason == "invalid_features"
    assert "features: missing" in missing.dead_letters[0].error
    short = pipeline.process(Prediction("digits", "b", 1.0, {}, [0.0] * 10))
    assert "expected 64 numbers" in short.dead_letters[0].error
    sent = pipeline.process(Prediction("digits", "c", 1.0, {"cnn": [0.1] * 10}, [0.0] * 64))
    assert "computed by the service" in sent.dead_letters[0].error
    assert pipeline.streams["digits"].predictions == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"input_shape": None}, "input_shape: required"),
    ({"colour": 1}, "torch.colour: unknown setting"),
    ({"model": "other"}, "'other' is not one of the stream's models"),
    ({"torchscript": "x.pt"}, "exactly one of 'torchscript'"),
    ({"export": {"every_updates": 0}}, "every_updates: must be an integer >= 1"),
])
def test_config_errors_name_the_field(model_file, change, message):
    stream = torch_stream(model_file)
    stream["torch"].update(change)
    if change.get("input_shape", 1) is None:
        del stream["torch"]["input_shape"]
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({"streams": [stream]})
    assert str(caught.value).startswith("streams[0].torch")


def test_model_loading_errors_name_the_file(model_file, tmp_path):
    config = parse_config({"streams": [torch_stream(tmp_path / "missing.pt")]})
    with pytest.raises(ConfigError, match="state_dict: no such file"):
        Pipeline(config.streams)
    wrong = tmp_path / "wrong.pt"
    torch.save(small_cnn(n_classes=10, width=16).state_dict(), wrong)
    config = parse_config({"streams": [torch_stream(wrong)]})
    with pytest.raises(ConfigError, match="does not match the model's architecture"):
        Pipeline(config.streams)
    stream = torch_stream(model_file)
    stream["torch"]["test_time"] = {"updates_every": 3}
    with pytest.raises(ConfigError, match="updates_every"):
        Pipeline(parse_config({"streams": [stream]}).streams)


def test_service_writes_artifacts_and_serves_them(model_file, digit_split, tmp_path):
    """Scenario: the service reads a JSONL file of torch-stream records (300 contrast-
    corrupted digits), with HTTP on a free port and a retention of 2.
    We expect: the served accuracy beats the deployed model's (scored as shipped); the
    weights sink's last record names an artifact that the store holds,
    only the 2 newest files are kept, and GET /v1/streams/digits/artifacts/{version}
    returns bytes with the published digest that load into the deployed architecture."""
    _, _, test_x, test_y = digit_split
    images, labels = digits.corrupted_stream(test_x[:300], test_y[:300], "contrast", (3,),
                                             seed=4)
    source = tmp_path / "records.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(r.to_json()) for r in records(images, labels)))
    document = {"source": {"kind": "jsonl", "path": str(source)},
                "state_dir": str(tmp_path / "state"), "http": {"port": 0},
                "outputs": {"weights": str(tmp_path / "weights.jsonl")},
                "artifacts": {"retain": 2}, "streams": [torch_stream(model_file)]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    service = Service(load_config(path))
    service.start_http()
    try:
        summary = service.run()
        scores = summary["streams"]["digits"]["scores"]
        # "raw" is the deployed model as shipped; "adapted" what the service served.
        assert scores["adapted"]["accuracy"] > scores["models"]["cnn"]["accuracy"] + 0.05
        published = [json.loads(line) for line in
                     (tmp_path / "weights.jsonl").read_text().splitlines()]
        artifact = published[-1]["artifact"]
        store = tmp_path / "state" / "artifacts" / "digits"
        assert len(list(store.glob("*.safetensors"))) == 2
        url = (f"http://127.0.0.1:{service.http.port}/v1/streams/digits/artifacts/"
               f"{artifact['version']}")
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read()
            assert response.headers["X-Streamweights-Digest"] == artifact["digest"]
        model = small_cnn(n_classes=10)
        load_into_model(model, decode_weights(data, artifact["digest"]))
    finally:
        service.close()
