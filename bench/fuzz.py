"""The long fuzz run of the decoder and the pipeline (issue 12): at least a million
inputs — mutations of valid records (structure, NaN/Infinity, numbers past the bounds,
surrogate escapes, invalid UTF-8, duplicated slices), valid records, documents generated
from scratch (duplicate keys, odd values) and random bytes — each decoded, checked
against the contract when accepted (read independently by the standard library's parser),
and applied to a pipeline of four streams (classification chain, FixedShare / Hedge /
OnlineStacking regression), which is renewed every ``--renew`` inputs.

Counted: exceptions other than ``RecordError``, accepted records that break the contract
(or pipeline outputs that are not finite), the largest CPU time one input took, and the
refusals by reason. The figures go in the issue's note; ``tests/test_fuzz.py`` runs the
same properties for a few seconds in CI.

``--lane`` fuzzes the core's record lane instead (``native/src/lane.rs``: its own JSON
reader, which takes most records in production): replays of the demo stream (1,500
events each) with a quarter of the records respelled and a twentieth mutated
(``tests/fuzzing.respelled``), each replay fed to a pipeline through the lane and to one
through decode -> process -> encode; counted: replays whose outputs, counters or state
differ in any bit (``tests/test_record_lane._check_same``), and how many records the
lane took.

Run: ``python bench/fuzz.py [--inputs 1000000] [--seed 12] [--renew 5000] [--lane]``.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import random
import sys
import time
from collections import Counter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from streamweights import events
from tests import fuzzing
from tests.fuzzing import (
    ContractBreachError,
    check_contract,
    check_outcome,
    new_pipeline,
    random_input,
    worst_inputs,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--renew", type=int, default=5_000,
                        help="inputs per pipeline before a fresh one")
    parser.add_argument("--lane", action="store_true",
                        help="fuzz the record lane against the general path instead")
    args = parser.parse_args(argv)
    if args.lane:
        return lane_main(args.inputs, args.seed)
    rng = random.Random(args.seed)
    reasons: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    breaches: Counter[str] = Counter()
    samples: list[str] = []
    accepted = applied = 0
    slowest, slowest_input = 0.0, b""
    pipeline = new_pipeline()
    started = time.perf_counter()
    clock = time.process_time
    for index in range(args.inputs):
        if index % args.renew == 0:
            pipeline = new_pipeline()
        raw = random_input(rng, index)
        began = clock()
        try:
            try:
                record = events.decode(raw)
            except events.RecordError as error:
                reasons[error.reason] += 1
                continue
            accepted += 1
            check_contract(raw, record)
            outcome = pipeline.process(record)
            for letter in outcome.dead_letters:
                reasons[f"pipeline:{letter.reason}"] += 1
            if not outcome.dead_letters:
                applied += 1
            check_outcome(pipeline, outcome)
        except ContractBreachError as error:
            breaches[str(error)[:60]] += 1
            if len(samples) < 5:
                samples.append(f"breach {error}: {raw[:200]!r}")
        except Exception as error:
            crashes[type(error).__name__] += 1
            if len(samples) < 5:
                samples.append(f"{type(error).__name__} {error}: {raw[:200]!r}")
        finally:
            took = clock() - began
            if took > slowest:
                slowest, slowest_input = took, raw
        if (index + 1) % 100_000 == 0:
            print(f"  {index + 1:,} inputs, {time.perf_counter() - started:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    print(f"inputs: {args.inputs:,} in {elapsed:.1f} s ({args.inputs / elapsed:,.0f}/s, "
          "generation and checks included)")
    print(f"accepted by the decoder: {accepted:,}; applied by the pipeline: {applied:,}")
    print(f"exceptions other than RecordError: {sum(crashes.values())} {dict(crashes)}")
    print(f"contract breaches: {sum(breaches.values())} {dict(breaches)}")
    print(f"slowest input: {slowest * 1e3:.2f} ms CPU ({len(slowest_input)} bytes)")
    for raw in worst_inputs():  # the known slowest refusals, timed on their own
        began = clock()
        with contextlib.suppress(events.RecordError):
            events.decode(raw)
        took = clock() - began
        print(f"worst-case input of {len(raw):,} bytes: {took * 1e3:.2f} ms CPU")
        if took > slowest:
            slowest, slowest_input = took, raw
    print("refusals by reason:")
    for reason, count in reasons.most_common():
        print(f"  {reason:<28}{count:>10,}")
    for sample in samples:
        print(sample)
    return 1 if crashes or breaches or slowest > 0.1 else 0


def lane_main(inputs: int, seed: int) -> int:
    """The lane fuzz (see the module doc): replays until ``inputs`` records are fed."""
    from tests.test_pipeline_batch import _replay, _streams
    from tests.test_record_lane import _check_same

    streams = _streams("demo.yaml")
    fed = taken = respelled = 0
    failures: list[str] = []
    started = time.perf_counter()
    replay = _replay(1_500)
    number = seed
    while fed < inputs:
        raws, changed = fuzzing.respelled(replay, random.Random(number))
        try:
            taken += _check_same(streams, raws)[0]
        except AssertionError as error:  # the record index is the assertion's message
            failures.append(f"replay seed {number}: {error!r}"[:300])
        fed += len(raws)
        respelled += len(changed)
        number += 1
        if fed // 100_000 != (fed - len(raws)) // 100_000:
            print(f"  {fed:,} records, {time.perf_counter() - started:.0f} s", flush=True)
    print(f"records: {fed:,} in {number - seed:,} replays ({respelled:,} respelled), "
          f"{time.perf_counter() - started:.1f} s; the lane took {taken:,}")
    print(f"replays that differ from the general path: {len(failures)}")
    for failure in failures[:5]:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
