"""The service warns when its checkpoints take most of its time (``CheckpointLoad``)."""

from __future__ import annotations

from streamweights.config import load_config
from streamweights.runtime.checkpoint_load import CheckpointLoad
from streamweights.runtime.service import Service


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_window_mostly_in_checkpoints_is_reported_once():
    """Scenario: a 60 s window of which checkpoints (0.3 s each, one every 0.4 s) take
    75%, then a window of which they take 20%. We expect: nothing before the first
    window ends; then one warning naming the share, the count, the longest and what to
    change; nothing for the second window."""
    clock = _Clock()
    load = CheckpointLoad(window=60.0, share=0.5, clock=clock)
    warnings = []
    for _ in range(150):
        clock.now += 0.4
        warnings.append(load.record(0.3))
    assert warnings[:-1] == [None] * 149
    assert warnings[-1] is not None
    assert warnings[-1].startswith("checkpoints took 75% of the last 60 s (150 of them, "
                                   "the longest 0.30 s)")
    assert "checkpoint.every_records / every_seconds" in warnings[-1]
    later = []
    for _ in range(60):
        clock.now += 1.0
        later.append(load.record(0.2))
    assert later == [None] * 60


def test_the_service_logs_the_warning(config_factory, caplog):
    """Scenario: the demo run with a load window of no length and no share allowed.
    We expect: its checkpoints are reported in the log as a warning."""
    service = Service(load_config(config_factory(events=600, checkpoint_every_records=200)))
    service._checkpoint_load = CheckpointLoad(window=0.0, share=0.0)
    try:
        with caplog.at_level("WARNING", logger="streamweights"):
            service.run()
    finally:
        service.close()
    assert any(record.levelname == "WARNING" and "checkpoints took" in record.getMessage()
               for record in caplog.records)
