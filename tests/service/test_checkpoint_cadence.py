"""The checkpoint's time cadence (``checkpoint.every_seconds``) is checked often enough
for a 100 ms cadence (configs/kafka.yaml's) to hold at moderate rates: the loop reads
the clock every 16 records, not every 256."""

from __future__ import annotations

import sys

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamweights.config import load_config
from streamweights.runtime.service import (
    DEFERRED_CHECKPOINT_RECORDS,
    THREAD_SWITCH_INTERVAL,
    Service,
)


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


def _run_with_commits_in_flight(config_factory, name: str, in_flight) -> tuple[Service, list]:
    """The demo through the real loop with ``every_records`` = 100; the local backend
    reports a commit in flight when ``in_flight(records_seen)`` says so (as the Kafka
    runtime does while the broker has not answered the previous cycle's commit). Returns
    the service (closed) and the records seen at each checkpoint of the loop."""
    path = config_factory(name, events=1500, checkpoint_every_records=100)
    service = Service(load_config(path))
    at_checkpoint = []
    checkpoint = service.checkpoint

    def observed_checkpoint() -> None:
        at_checkpoint.append(service.records_seen)
        checkpoint()

    service.checkpoint = observed_checkpoint
    service.state.commit_in_flight = lambda: in_flight(service.records_seen)
    try:
        service.run()
    finally:
        service.close()
    return service, at_checkpoint


def _outputs(service: Service) -> list[bytes]:
    config = service.config
    return [open(path, "rb").read() for path in (config.adapted_path, config.weights_path)]


def test_a_due_checkpoint_waits_for_the_commit_in_flight_while_records_go_on(config_factory):
    """Scenario: the demo with a checkpoint due every 100 records; a commit is in flight
    (the cycle checkpointed at record 300, not yet answered) until record 500.
    We expect: no checkpoint while it is in flight, the loop going on with the records
    meanwhile; the due checkpoint at the first check after it answered (the loop looks
    every 16 records once one is overdue), then the cadence as before; the same output
    bytes as a run whose commits never wait."""
    service, seen = _run_with_commits_in_flight(
        config_factory, "deferred", lambda records: 300 < records < 500)
    plain, plain_seen = _run_with_commits_in_flight(config_factory, "plain", lambda _: False)
    assert plain_seen[:5] == [100, 200, 300, 400, 500]
    assert seen[:2] == [100, 200]
    assert not any(300 < records < 500 for records in seen)
    assert 500 <= seen[3] < 516 and seen[2] == 300
    assert seen[4] - seen[3] == 100  # the cadence counts from the deferred checkpoint
    assert _outputs(service) == _outputs(plain)
    assert service.records_seen == plain.records_seen > 2000


def test_a_commit_that_stays_in_flight_blocks_the_loop_after_four_intervals(config_factory):
    """Scenario: the same run with a commit reported in flight at every check.
    We expect: the loop waits no longer than DEFERRED_CHECKPOINT_RECORDS intervals'
    worth of records: then it checkpoints (and so blocks on the commit) as before; the
    outputs are unchanged."""
    service, seen = _run_with_commits_in_flight(config_factory, "stuck", lambda _: True)
    plain, _ = _run_with_commits_in_flight(config_factory, "plain", lambda _: False)
    cap = DEFERRED_CHECKPOINT_RECORDS * 100
    loop_checkpoints = seen[:-1]  # (the last is the run's final one)
    assert loop_checkpoints == [cap * k for k in range(1, len(loop_checkpoints) + 1)]
    assert len(loop_checkpoints) == service.records_seen // cap
    assert _outputs(service) == _outputs(plain)
