"""The checkpoint's time cadence (``checkpoint.every_seconds``) is checked often enough
for a 100 ms cadence (configs/kafka.yaml's) to hold at moderate rates: the loop reads
the clock every 16 records, not every 256."""

from __future__ import annotations

import sys

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamweights.config import load_config
from streamweights.runtime.service import THREAD_SWITCH_INTERVAL, Service


def _checkpoints(service: Service) -> int:
    for family in text_string_to_metric_families(
            generate_latest(service.metrics.registry).decode()):
        if family.name == "streamweights_checkpoint_duration_seconds":
            return int(next(sample.value for sample in family.samples
                            if sample.name.endswith("_count")))
    raise AssertionError("no checkpoint histogram")


def test_time_cadence_is_checked_every_16_records(config_factory):
    """Scenario: a replay of the demo with no record cadence to speak of (10^9) and a
    time cadence far below a record's processing time.
    We expect: a checkpoint every 16 records (the clock is read that often and the
    cadence is always due), plus the final one; with the clock read every 256 records
    there were 16 times fewer."""
    path = config_factory("cadence", events=1500, checkpoint_every_records=10**9)
    document = yaml.safe_load(path.read_text())
    document["checkpoint"]["every_seconds"] = 1e-9
    path.write_text(yaml.safe_dump(document))
    service = Service(load_config(path))
    try:
        service.run()
        records = service.records_seen
        assert records > 2000
        assert _checkpoints(service) == records // 16 + 1
    finally:
        service.close()


def test_run_shortens_the_thread_switch_interval_and_restores_it(config_factory):
    """Scenario: a replay of the demo, the interpreter's switch interval read at every
    checkpoint (inside the loop) and after the run.
    We expect: THREAD_SWITCH_INTERVAL while the service runs (the commit's and the
    network threads' hand-overs wait at most that long), the caller's value after."""
    path = config_factory("switch", events=300)
    service = Service(load_config(path))
    seen = []
    checkpoint = service.checkpoint

    def observed_checkpoint() -> None:
        seen.append(sys.getswitchinterval())
        checkpoint()

    service.checkpoint = observed_checkpoint
    before = sys.getswitchinterval()
    try:
        service.run()
    finally:
        service.close()
    assert before != THREAD_SWITCH_INTERVAL
    assert seen and set(seen) == {THREAD_SWITCH_INTERVAL}
    assert sys.getswitchinterval() == before
