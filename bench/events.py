"""Which JSON library to decode and encode records with: stdlib json vs orjson.

Measured on the records the default replay produces (predictions with three models'
probabilities, labels) and on adapted records, in alternating rounds in one process.
``events.py`` uses orjson because of this measurement. The last lines time the whole
decoder, with the core's quick path and with the Python validators alone.

Run: ``python bench/events.py [--events 20000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import orjson

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from streamweights import events
from streamweights.config import SourceConfig
from streamweights.runtime.replay import ReplayStream


def _best(function, rounds):
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"generating {args.events} replay events ...", flush=True)
    raws = [raw for _, raw in ReplayStream(SourceConfig(events=args.events)).records()]
    objects = [orjson.loads(raw) for raw in raws]
    adapted = [{"schema": 1, "stream": "demo", "id": f"demo-{i}", "ts": 1750000000.0 + i,
                "proba": [0.25 + i * 1e-9, 0.75 - i * 1e-9], "weights_version": 3}
               for i in range(len(raws))]
    cases = {
        "decode": (lambda: [json.loads(r) for r in raws], lambda: [orjson.loads(r) for r in raws]),
        "encode adapted": (lambda: [json.dumps(o).encode() for o in adapted],
                           lambda: [orjson.dumps(o) for o in adapted]),
        "encode records": (lambda: [json.dumps(o).encode() for o in objects],
                           lambda: [orjson.dumps(o) for o in objects]),
    }
    print(f"{'operation':<16}{'json rec/s':>14}{'orjson rec/s':>14}{'ratio':>8}")
    for name, (standard, fast) in cases.items():
        times = {"json": float("inf"), "orjson": float("inf")}
        for _ in range(args.rounds):
            times["json"] = min(times["json"], _best(standard, 1))
            times["orjson"] = min(times["orjson"], _best(fast, 1))
        n = len(raws)
        print(f"{name:<16}{n / times['json']:>14,.0f}{n / times['orjson']:>14,.0f}"
              f"{times['json'] / times['orjson']:>7.1f}x")
    # The whole strict decoder (parse, shape and bounds checks, duplicate-key check), with
    # the core's quick path (what the service runs) and with the Python validators only
    # (its reference and error path), in alternating rounds.
    limit = events.DEFAULT_MAX_RECORD_BYTES
    decoders = {
        "events.decode": lambda: [events.decode(r) for r in raws],
        "python path": lambda: [events._decode_python(events._parse(r, limit), r, 0)
                                for r in raws],
    }
    times = dict.fromkeys(decoders, float("inf"))
    for _ in range(args.rounds):
        for name, function in decoders.items():
            times[name] = min(times[name], _best(function, 1))
    for name, full in times.items():
        print(f"{name:<16}{'':>14}{len(raws) / full:>14,.0f}{full / len(raws) * 1e6:>6.2f}us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
