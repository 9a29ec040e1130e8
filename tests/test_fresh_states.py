"""The built states a Kafka roll-back restores (``runtime.fresh_states``): streams built
alike share one encoding, and only when sharing gives each stream its own bytes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamweights.adapters import dumps_state
from streamweights.config import StreamConfig
from streamweights.pipeline import Pipeline
from streamweights.runtime.fresh_states import fresh_states
from tests.test_pipeline_batch import _streams


@pytest.mark.parametrize("config_file", ["demo.yaml", "kafka.yaml"])
def test_streams_built_alike_share_one_encoding_equal_to_each_ones_own(config_file):
    """Scenario: five streams of one configuration under five names, then one with
    another adapter chain, built as the service builds them.
    We expect: each stream's entry equal to encoding its own state; past the second
    (encoded to check that the first's bytes serve) the alike share the first's string
    object; the sixth has its own."""
    base = _streams(config_file)[0]
    other = dataclasses.replace(base, name="other", adapters=base.adapters[:1])
    alike = [dataclasses.replace(base, name=f"s{i}") for i in range(5)]
    pipeline = Pipeline((*alike, other))
    encoded = fresh_states(pipeline.streams.items())
    for name, stream in pipeline.streams.items():
        assert encoded[name] == dumps_state(stream.state_dict()), name
    assert all(encoded[f"s{i}"] is encoded["s0"] for i in range(2, 5))
    assert encoded["other"] != encoded["s0"]


class _Built:
    """A stream stand-in whose state holds whatever it is given, counting reads."""

    def __init__(self, config: StreamConfig, state: dict[str, Any]) -> None:
        self.config, self.state, self.reads = config, state, 0

    def state_dict(self) -> dict[str, Any]:
        self.reads += 1
        return dict(self.state)


def test_a_state_that_differs_by_name_or_a_torch_stream_is_encoded_for_each():
    """Scenario: streams of one configuration whose states hold their names (as one
    that depended on the name or on the build order would differ); streams alike but
    for a ``torch`` block, whose states are equal.
    We expect: every stream of both kinds encoded from its own state (each read once),
    so none is given another's bytes."""
    base = _streams("kafka.yaml")[0]
    by_name = [_Built(dataclasses.replace(base, name=f"n{i}"), {"name": f"n{i}"})
               for i in range(4)]
    torch = [_Built(dataclasses.replace(base, name=f"t{i}", torch={"model": "x"}),
                    {"same": 1}) for i in range(3)]
    encoded = fresh_states((stream.config.name, stream) for stream in (*by_name, *torch))
    for stream in (*by_name, *torch):
        assert encoded[stream.config.name] == dumps_state(stream.state), stream.config.name
        assert stream.reads == 1
