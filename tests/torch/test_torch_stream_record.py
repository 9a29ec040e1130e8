"""A torch stream's state through a stream record (format 5): its waiting predictions carry
more than arrays (the head's features and the frozen model's probabilities as float
lists), so they take the packed form's general path, not the join's cached one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamweights.adapters.state_codec import dumps_state
from streamweights.config import parse_config
from streamweights.pipeline import Pipeline
from streamweights.runtime.state_store import decode_stream_record, encode_stream
from tests.torch import digits
from tests.torch.test_torch_stream import records, run, torch_stream


@pytest.fixture(scope="module")
def model_path(digit_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits-cnn.pt"
    torch.save(digit_model.state_dict(), path)
    return path


def test_torch_stream_restored_from_its_stream_record_finishes_bit_for_bit(
        model_path, digit_split):
    """Scenario: 200 blurred digits through a torch stream; halfway, its stream record is
    written and a new pipeline restored from it finishes the stream.
    We expect: the record decodes to the state ``state_dict()`` gives (same JSON text),
    the restored stream writes the same record bytes, and it serves what the
    uninterrupted run served, bit for bit."""
    _, _, test_x, test_y = digit_split
    images, labels = digits.corrupted_stream(test_x[:200], test_y[:200], "blur", (4,), seed=3)
    stream = records(images, labels)
    config = parse_config({"streams": [torch_stream(model_path)]})
    served, _, _ = run(Pipeline(config.streams), stream)
    first = Pipeline(config.streams)
    half = len(stream) // 2
    run(first, stream[:half])
    source = first.streams["digits"]
    payload = source.join.waiting()[0].payload
    assert {"head_features", "frozen"} <= set(payload)
    written = encode_stream("digits", source)
    name, state, _ = decode_stream_record(written.record, "test", dict(written.segments))
    layout = state["join"].pop("segments")
    assert name == "digits" and dumps_state(state) == dumps_state(source.state_dict())
    restored = Pipeline(config.streams)
    restored.streams["digits"].load_state_dict({**state, "join": {**state["join"],
                                                                  "segments": layout}})
    again = encode_stream("digits", restored.streams["digits"])
    assert (again.record, again.segments) == (written.record, [])
    rest, _, _ = run(restored, stream[half:])
    assert np.array_equal(np.array(rest), np.array(served[-len(rest):]))
