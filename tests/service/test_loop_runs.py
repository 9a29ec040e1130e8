"""The embedded loop takes a local source's records in runs (``Pipeline.process_many``):
outputs, dead letters, state, counters, checkpoints and the ``max_records`` bound are
what the record-at-a-time loop gives, record for record."""

from __future__ import annotations

import json
import pathlib

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamweights.adapters import dumps_state
from streamweights.config import load_config
from streamweights.runtime.service import Service


class OneAtATime(Service):
    """The same service taking one record at a time (as it does from Kafka or stdin)."""

    def _reads_ahead(self) -> bool:
        return False


def _samples(service: Service) -> dict[tuple[str, tuple], float]:
    """The loop's own series (records, dead letters, joins, checkpoints, latency counts)."""
    wanted = {"streamweights_events", "streamweights_invalid_records",
              "streamweights_labels_joined", "streamweights_checkpoint_duration_seconds",
              "streamweights_update_latency_seconds"}
    found = {}
    for family in text_string_to_metric_families(
            generate_latest(service.metrics.registry).decode()):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _input(folder: pathlib.Path) -> pathlib.Path:
    """A JSONL input: a replay of the demo with bad records and blank lines mixed in."""
    from streamweights.config import SourceConfig
    from streamweights.runtime.replay import ReplayStream

    lines = []
    replay = ReplayStream(SourceConfig(scenario="agrawal-recurring", events=700,
                                       stream="demo"))
    for position, raw in replay.records():
        lines.append(raw)
        if position % 97 == 5:
            lines.append(b'{"schema":1,"stream":"demo","id":"x","ts":')  # malformed
        if position % 131 == 7:
            lines.append(b"")  # a blank line: skipped, but it takes a position
        if position % 173 == 11:
            lines.append(raw)  # a duplicate prediction / an unmatched label
    path = folder / "input.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(factory, config_factory, name: str, input_path: pathlib.Path,
         max_records: int | None) -> tuple:
    path = config_factory(name, source={"kind": "jsonl", "path": str(input_path)},
                          checkpoint_every_records=100)
    document = yaml.safe_load(path.read_text())
    document["logging"]["progress_every_seconds"] = 1e-9  # a progress line when allowed
    path.write_text(yaml.safe_dump(document))
    service = factory(load_config(path), max_records=max_records)
    try:
        summary = service.run()
        state = dumps_state(service.pipeline.state_dict())
        samples = _samples(service)
        position, seen = service.position, service.records_seen
    finally:
        service.close()
    outputs = {kind: (path.parent / f"{kind}.jsonl").read_bytes()
               for kind in ("adapted", "weights", "dead-letter")}
    return summary, state, samples, position, seen, outputs


def test_runs_give_what_one_record_at_a_time_gives(config_factory, tmp_path):
    """Scenario: a JSONL file (bad records, blank lines) read to its end, and read up to
    a ``max_records`` bound that is on no run's edge, with a checkpoint every 100
    records (not a multiple of 16), once in runs and once a record at a time.
    We expect: byte-equal adapted, weights and dead-letter files, the same summary and
    state, the same counters, as many checkpoints and one latency observation per record
    of each kind."""
    input_path = _input(tmp_path)
    for bound in (None, 1_003):
        runs = _run(Service, config_factory, f"runs-{bound}", input_path, bound)
        single = _run(OneAtATime, config_factory, f"single-{bound}", input_path, bound)
        summary, state, samples, position, seen, outputs = runs
        assert outputs == single[5]
        assert json.dumps(summary, sort_keys=True) == json.dumps(single[0], sort_keys=True)
        assert state == single[1]
        assert samples == single[2]
        assert (position, seen) == single[3:5]
        assert outputs["dead-letter"].count(b"\n") >= 10
        latency = sum(value for (name, _), value in samples.items()
                      if name == "streamweights_update_latency_seconds_count")
        assert latency == seen
        checkpoints = next(value for (name, _), value in samples.items()
                           if name == "streamweights_checkpoint_duration_seconds_count")
        assert checkpoints == seen // 100 + 1
        if bound is not None:
            assert position == bound
