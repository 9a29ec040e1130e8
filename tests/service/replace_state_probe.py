"""Run by tests/service/test_heap_streams.py in a fresh interpreter (no other test's
threads making garbage meanwhile): ``python replace_state_probe.py CONFIG STREAM``
runs the service on CONFIG, then, with the collector off, replaces STREAM's state 20
times, alternately by its initial and its trained state, as a Kafka rebalance rolls a
task back. Prints JSON: the tracked-object count after each pair of loads, what a
collection then finds, and the types of what it found."""

from __future__ import annotations

import gc
import json
import sys

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import load_config
from streamweights.runtime.service import Service


def main(config_path: str, name: str) -> None:
    service = Service(load_config(config_path))
    try:
        stream = service.pipeline.streams[name]
        initial = dumps_state(stream.state_dict())
        service.run()
        trained = dumps_state(stream.state_dict())
        stream.load_state_dict(loads_state(initial), owned=True)  # one-off caches first
        stream.load_state_dict(loads_state(trained), owned=True)
        gc.collect()
        gc.disable()
        counts = []
        for _ in range(10):
            stream.load_state_dict(loads_state(initial), owned=True)
            stream.load_state_dict(loads_state(trained), owned=True)
            counts.append(len(gc.get_objects()))
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        garbage = sorted({type(item).__qualname__ for item in gc.garbage})
    finally:
        service.close()
    print(json.dumps({"changed": trained != initial, "counts": counts, "found": found,
                      "garbage": garbage}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
