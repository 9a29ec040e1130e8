"""The state each stream was built with, kept encoded, shared by streams built alike.

A Kafka replica rolls a task back to its last commit at every rebalance and failed
commit, and a stream that has no record in the changelog goes back to the state it was
built with. Encoding that state for each stream cost ~0.3 ms and 17 KB a default Kafka
stream (~0.75-0.9 ms and 26 KB a demo one): ~2.9 s and 169 MB for 10,000 streams before
the first record, and loading it into each at the first assignment ~2 s more
(forty-ninth session). Streams whose configurations differ only in their
names build the same state, so one encoding serves them all; that is checked, not
assumed: a group shares its first encoding only once its second stream's encoding came
out equal to it (a state that holds the name, or that depends on the order streams are
built in, would not), and a stream with a torch model is always encoded on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

from streamweights.adapters.state_codec import dumps_state
from streamweights.config import StreamConfig


class BuiltStream(Protocol):
    """What this module needs of a stream: its configuration and its state."""

    config: StreamConfig

    def state_dict(self) -> dict[str, Any]: ...


def fresh_states(streams: Iterable[tuple[str, BuiltStream]]) -> dict[str, str]:
    """Each stream's state, encoded (``dumps_state``), for streams not yet given a
    record; streams built alike share one string (see the module's doc)."""
    encoded: dict[str, str] = {}
    first: dict[str, str] = {}  # a group's first encoding, until its second is compared
    shared: dict[str, str | None] = {}  # a group's shared encoding, None: each its own
    for name, stream in streams:
        config = stream.config
        if config.torch is not None:
            encoded[name] = dumps_state(stream.state_dict())
            continue
        group = repr(dataclasses.replace(config, name=""))
        common = shared.get(group)
        if common is not None:
            encoded[name] = common
            continue
        encoded[name] = own = dumps_state(stream.state_dict())
        if group in shared:  # its second stream differed: each stream its own
            continue
        if group not in first:
            first[group] = own
        else:
            earlier = first.pop(group)
            shared[group] = earlier if own == earlier else None
    return encoded
