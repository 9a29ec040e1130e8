"""A replica alone in its group joins exactly once at start-up (issue 11).

kafka-python 3.0.12 remembers, at the leader's assignment, the partition metadata it
assigned from (``ConsumerCoordinator._assignment_snapshot``) and rejoins whenever a
later metadata answer differs. That remembered snapshot is only refreshed by a metadata
answer that arrives *after* ``subscribe``; when the group coordinator is found at once
(any warm broker), the first JoinGroup completes before that answer and the snapshot is
``{}``: the answer ~0.1-0.5 s later then starts a second rebalance that revokes and
re-assigns the very same partitions. Against a real broker: a fresh group per start,
every rebalance-listener call counted, several starts (the race is timing-dependent).
"""

from __future__ import annotations

import time
import uuid

from kafka import ConsumerRebalanceListener

from streamweights.runtime.kafka_source import KafkaSource, wait_for_assignment

STARTS = 4
#: Long enough for the metadata answer (and the rebalance it used to start) to arrive.
WATCH_SECONDS = 2.0


def _count_rebalances(source: KafkaSource) -> list[str]:
    """Wrap the source's rebalance listener in one that records every call (and still
    raises the source's flag, so its loop behaves as in service). Reaches into the
    client's subscription state: the client offers no public way to read the listener."""
    calls: list[str] = []
    flag = source.consumer._subscription.rebalance_listener  # the source's own listener

    class Counting(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            calls.append(f"revoked {len(revoked)}")
            flag.on_partitions_revoked(revoked)

        def on_partitions_assigned(self, assigned):
            calls.append(f"assigned {len(assigned)}")
            flag.on_partitions_assigned(assigned)

    source.consumer._subscription.rebalance_listener = Counting()
    return calls


def test_a_lone_replica_is_assigned_once(kafka_bootstrap, topic_factory):
    predictions = topic_factory("predictions", partitions=3)
    labels = topic_factory("labels", partitions=3)
    histories = []
    for _ in range(STARTS):
        source = KafkaSource(kafka_bootstrap, predictions, labels,
                             group_id=f"single-join-{uuid.uuid4().hex[:8]}")
        try:
            source.connect()
            calls = _count_rebalances(source)
            wait_for_assignment(source)
            deadline = time.monotonic() + WATCH_SECONDS
            while time.monotonic() < deadline:
                source._fetch()
            histories.append(list(calls))  # before close() revokes
            assert sorted(tp.partition for tp in source.consumer.assignment()) \
                == [0, 0, 1, 1, 2, 2]
        finally:
            source.close()
    # one (empty) revocation before the first join, then one assignment: nothing more
    assert histories == [["revoked 0", "assigned 6"]] * STARTS, histories
