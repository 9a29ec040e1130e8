"""The service loop ends only between records: a record the source has handed over is
processed before a stop request, a bound or the kill hook ends the loop, whether the
core's lane applies it (``RecordLane.drain``), hands it back to route its outputs, or
leaves it to the general path. (A record pulled and then dropped would be lost: the
Kafka source counts a record as consumed when it hands it over.)"""

from __future__ import annotations

import pytest
import yaml

from streamweights.config import load_config
from streamweights.runtime.replay import ReplayStream
from streamweights.runtime.service import Service
from streamweights.runtime.sources import RecordsSource


class _StopWhileHandingOver(RecordsSource):
    """Records in memory; a stop is requested while the record at ``at`` is being
    handed over (as a SIGTERM handler runs inside the source's own code)."""

    def __init__(self, records, service, at):
        super().__init__(records)
        self.service, self.at = service, at

    def open(self, start):
        for position, raw in super().open(start):
            if position == self.at:
                self.service.request_stop()
            yield position, raw


@pytest.mark.parametrize("adapted", [True, False])
@pytest.mark.parametrize("kind", ["prediction", "label", "malformed"])
def test_a_stop_during_a_hand_over_ends_after_that_record(config_factory, adapted, kind):
    """Scenario: the demo's records through the real loop; a stop is requested while
    the source hands over a prediction (with an adapted sink the lane hands it back to
    route its record), a label (applied by the lane alone) or a malformed record (the
    general path).
    We expect: the loop ends right after that record: the input position is one past
    it, the record counted; the next run from there sees nothing twice."""
    path = config_factory(f"stop-{kind}-{adapted}", events=600)
    document = yaml.safe_load(path.read_text())
    if not adapted:
        document["outputs"]["adapted"] = None
    path.write_text(yaml.safe_dump(document))
    config = load_config(path)
    records = [raw for _, raw in ReplayStream(config.source).records()]
    # After a record the lane applied in the same drain (a label, off a 16-record
    # boundary, where the loop's own checks would pause it anyway).
    if kind == "malformed":
        records.insert(405, b'{"schema": 1, "stream": "demo"')
        at = 405
    else:
        marker = b'"outputs"' if kind == "prediction" else b'"label"'
        at = next(i for i in range(400, len(records)) if marker in records[i]
                  and b'"label"' in records[i - 1] and i % 16 not in (0, 1))
    service = Service(config)
    try:
        service.source = _StopWhileHandingOver(records, service, at)
        service._loop()
        assert service.position == at + 1 and service.records_seen == at + 1
        summary = service.pipeline.summary()
        assert summary["invalid"] == ({"malformed_json": 1} if kind == "malformed" else {})
        service.source = RecordsSource(records)
        service._stop = type(service._stop)()  # (a new process' flag)
        service._loop()
        assert service.position == len(records)
        again = service.pipeline.summary()
        assert again["invalid"] == summary["invalid"]  # nothing applied twice
    finally:
        service.close()
