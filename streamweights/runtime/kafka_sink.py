"""Records to Kafka: adapted predictions, weights versions or dead letters on one topic.

A thin wrapper over ``kafka.KafkaProducer`` with the interface of the file sink
(``write`` / ``flush`` / ``position`` / ``truncate`` / ``close``), so the service loop can
route its outputs to either. Records are keyed by stream (taken from the record's
``stream`` field unless given), so one stream's versions stay in order on one partition
and a compacted weights topic keeps the latest version per stream.

Delivery here is idempotent (no duplicates from producer retries) but not transactional,
and ``truncate`` cannot take back records already sent (it only resets the count). The
Kafka runtime does not use it: its outputs go through one transactional producer
(:class:`streamweights.runtime.kafka_runtime.TransactionalSink`); this sink is for
embedding and tests that want plain Kafka output from the embedded service.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamweights.runtime.exceptions import RuntimeSetupError


def stream_key(raw: bytes) -> bytes | None:
    """The ``stream`` field of a JSON record as the message key (``None`` if absent)."""
    try:
        stream = orjson.loads(raw).get("stream")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return stream.encode() if isinstance(stream, str) else None


class KafkaSink:
    """Sends one JSON record per message to ``topic``, keyed by stream.

    Parameters
    ----------
    bootstrap_servers, topic
        Where to write.
    client_settings
        Passed to ``kafka.KafkaProducer`` as they are (security, ``linger_ms`` ...);
        the defaults ask for ``acks="all"`` and idempotence so a retry never duplicates.
    """

    def __init__(self, bootstrap_servers: str, topic: str, *,
                 client_settings: dict[str, Any] | None = None) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaTimeoutError

        self.topic = topic
        self.path = f"kafka:{topic}"
        settings = {"acks": "all", "enable_idempotence": True, "linger_ms": 5,
                    "bootstrap_timeout_ms": 10_000,
                    **(client_settings or {})}
        try:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **settings)
        except KafkaTimeoutError:  # kafka-python: 'Unable to bootstrap from ...'
            raise RuntimeSetupError(f"kafka.bootstrap_servers: cannot reach a Kafka broker at "
                                    f"{bootstrap_servers}") from None
        self._sent = 0
        self._error: Exception | None = None

    @property
    def position(self) -> int:
        """Records handed to the producer so far."""
        return self._sent

    def write(self, raw: bytes, headers: list[tuple[str, bytes]] | None = None,
              key: bytes | None = None) -> None:
        self._raise_pending()
        future = self.producer.send(self.topic, value=raw, headers=headers,
                                    key=key if key is not None else stream_key(raw))
        future.add_errback(self._remember)
        self._sent += 1

    def _remember(self, error: Exception) -> None:
        if self._error is None:
            self._error = error

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"kafka sink {self.topic}: a send failed: {error!r}") from error

    def flush(self) -> None:
        """Block until every record written so far is acknowledged (or raise)."""
        self.producer.flush()
        self._raise_pending()

    def truncate(self, position: int) -> None:
        """Sent records cannot be taken back; only the count is reset (see module doc)."""
        self._sent = position

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self._raise_pending()
