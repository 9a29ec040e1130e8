"""Versioned weight export (issue 5, item 5): safetensors files with a digest, an atomic
local store with retention, and the HTTP endpoint that serves them."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from streamweights.adapters.torch import TestTimeAdapter
from streamweights.adapters.torch.examples import small_cnn
from streamweights.adapters.torch.weights_file import (
    DigestMismatchError,
    decode_weights,
    encode_weights,
    load_into_model,
    read_metadata,
)
from streamweights.runtime.artifact_store import ArtifactStore
from streamweights.runtime.http import HttpServer, ServiceView
from streamweights.runtime.metrics import ServiceMetrics
from tests.torch import digits

INPUT_SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def adapted(digit_model, digit_split):
    """A TestTimeAdapter after a corrupted stream (its statistics and affine moved)."""
    _, _, test_x, test_y = digit_split
    images, _ = digits.corrupted_stream(test_x, test_y, "contrast", (4,), seed=90)
    adapter = TestTimeAdapter(digit_model, 10, INPUT_SHAPE, update_every=32)
    adapter.predict_observe_many(images)
    return adapter, images


def test_an_exported_version_reproduces_the_adapted_model_exactly(adapted, tmp_path):
    """Scenario: export the adapted model, store it, read it back checking its digest and
    load it into a fresh copy of the deployed architecture (plain BatchNorm layers).
    We expect: the fresh copy's outputs equal the adapted model's bit for bit, and differ
    from the deployed model's (the export carries the adaptation)."""
    adapter, images = adapted
    data, digest = encode_weights(adapter.export_tensors(), {"stream": "digits"})
    store = ArtifactStore(tmp_path / "artifacts")
    location = store.write("digits", 3, data, digest)
    assert location == "digits/0000000003.safetensors"
    stored, manifest = store.read("digits", 3)
    assert manifest["digest"] == digest
    fresh = small_cnn(n_classes=10).eval()
    load_into_model(fresh, decode_weights(stored, manifest["digest"]))
    inputs = torch.from_numpy(images[:300])
    with torch.no_grad():
        expected = adapter.model(inputs)
        assert torch.equal(fresh(inputs), expected)
        assert not torch.equal(small_cnn(n_classes=10).eval()(inputs), expected)
    assert encode_weights(adapter.export_tensors(), {"stream": "digits"}) == (data, digest)
    assert read_metadata(data) == {"stream": "digits"}


def test_a_corrupted_artifact_is_detected_by_its_digest(adapted, tmp_path):
    """Scenario: one byte of a stored file flips on disk.
    We expect: decoding with the published digest refuses it, naming both digests, and
    the HTTP endpoint answers 500 instead of serving it."""
    adapter, _ = adapted
    data, digest = encode_weights(adapter.export_tensors())
    store = ArtifactStore(tmp_path / "artifacts")
    store.write("digits", 1, data, digest)
    path = tmp_path / "artifacts" / "digits" / "0000000001.safetensors"
    corrupted = bytearray(path.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    path.write_bytes(bytes(corrupted))
    with pytest.raises(DigestMismatchError, match="does not match the published"):
        decode_weights(store.read("digits", 1)[0], digest)
    status, _, _ = _serve_and_get(store, "/v1/streams/digits/artifacts/1")
    assert status == 500


def test_retention_keeps_the_newest_versions(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts", retain=3)
    for version in range(1, 8):
        data, digest = encode_weights({"w": np.full(4, version, dtype=np.float32)})
        store.write("a/b stream", version, data, digest)
    assert store.versions("a/b stream") == [5, 6, 7]
    assert store.read("a/b stream", 4) is None
    assert decode_weights(*_data_and_digest(store, "a/b stream", 7))["w"].tolist() == [7.0] * 4
    leftovers = [p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert not [name for name in leftovers if name.endswith(".tmp")]
    assert len(leftovers) == 6


def test_http_serves_a_stored_version_with_its_digest(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    data, digest = encode_weights({"layer.weight": np.arange(6, dtype=np.float32)})
    store.write("digits", 12, data, digest)
    status, body, headers = _serve_and_get(store, "/v1/streams/digits/artifacts/12")
    assert status == 200 and body == data
    assert headers["X-Streamweights-Digest"] == digest
    assert headers["X-Streamweights-Version"] == "12"
    assert _serve_and_get(store, "/v1/streams/digits/artifacts/13")[0] == 404
    assert _serve_and_get(store, "/v1/streams/digits/artifacts/latest")[0] == 400
    assert _serve_and_get(None, "/v1/streams/digits/artifacts/12")[0] == 404


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="nothing to export"):
        encode_weights({})
    with pytest.raises(ValueError, match="not a safetensors file"):
        decode_weights(b"not a file at all", None)
    model = small_cnn(n_classes=10)
    with pytest.raises(ValueError, match="does not match the model's architecture"):
        load_into_model(model, {"0.weight": np.zeros((1, 1, 3, 3), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"the model has no entry 'fc\.weight'"):
        load_into_model(model, {"fc.weight": np.zeros(3, dtype=np.float32)}, strict=False)


def _data_and_digest(store, stream, version):
    data, manifest = store.read(stream, version)
    return data, manifest["digest"]


def _serve_and_get(store, path):
    view = ServiceView()
    view.artifacts = store
    server = HttpServer("127.0.0.1", 0, view, ServiceMetrics())
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)
    finally:
        server.stop()
