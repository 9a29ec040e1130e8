"""Fail fast, and say why, when the broker refuses our TLS or SASL credentials.

kafka-python treats a refused password like an unreachable broker: its clients retry
the bootstrap until ``bootstrap_timeout_ms`` and then raise a bare timeout ("Unable to
bootstrap"), which tells an operator nothing. With ``kafka.security_protocol`` other than
PLAINTEXT the runtime therefore opens ONE connection to the first bootstrap server
before it builds any client and, if the TLS handshake or the SASL exchange is refused,
raises a ``RuntimeSetupError`` naming the setting to fix and the broker's own reason
(e.g. "Authentication failed during authentication due to invalid credentials with SASL
mechanism SCRAM-SHA-512"): one line, well under a second after start.

It uses kafka-python's connection manager (``KafkaNetClient``, 3.0.x) directly, since no
public call connects to one broker and reports why it failed. If those internals change,
the probe steps aside (returns) and the ordinary "cannot reach a Kafka broker" error
still applies.
"""

from __future__ import annotations

from typing import Any

from streamweights.config import KafkaConfig
from streamweights.runtime.exceptions import RuntimeSetupError


def _probe_once(settings: dict[str, Any], timeout_ms: int) -> tuple[str | None, bool]:
    """Connect once: the failure text (``None`` when the connection was accepted) and
    whether the broker had answered as Kafka (ApiVersions) before it failed."""
    from kafka.net.compat import KafkaNetClient

    client = KafkaNetClient(**settings)
    try:
        node = client.cluster.bootstrap_brokers()[0].node_id
        connection = client._manager.get_connection(node, pop_on_close=False,
                                                    refresh_metadata_on_err=False)
        client._net.poll(timeout_ms=timeout_ms, future=connection.init_future)
        future = connection.init_future
        if not future.is_done:
            return "no answer within the timeout", False
        if future.succeeded():
            return None, True
        spoke_kafka = connection.broker_version is not None
        return f"{type(future.exception).__name__}: {future.exception}", spoke_kafka
    finally:
        client.close()


def check_credentials(kafka: KafkaConfig, settings: dict[str, Any],
                      timeout_ms: int = 10_000) -> None:
    """Raise ``RuntimeSetupError`` (one line) if the first bootstrap server refuses the
    TLS handshake or the SASL credentials; return quietly otherwise, also when it cannot
    be reached at all (the caller reports that with its own message).

    A refused password shows either as the broker's SaslAuthenticate error or, when the
    broker's close overtakes its answer, as a disconnect after the broker had answered
    ApiVersions: the only step of a connection's set-up after that is SASL."""
    security = kafka.security
    if security.security_protocol == "PLAINTEXT":
        return
    from kafka import KafkaAdminClient

    config = {**KafkaAdminClient.DEFAULT_CONFIG, **settings,
              "bootstrap_servers": kafka.bootstrap_servers, "client_id": "streamweights-probe"}
    try:
        failure, spoke_kafka = _probe_once(config, timeout_ms)
    except (AttributeError, TypeError, IndexError):
        return  # kafka-python's internals moved: leave it to the clients' errors
    if failure is None:
        return
    server = kafka.bootstrap_servers.split(",")[0].strip()
    marker = "SaslAuthenticationFailedError: "
    if marker in failure or (spoke_kafka and security.sasl_mechanism):
        detail = (failure[failure.rfind(marker) + len(marker):] if marker in failure
                  else "it closed the connection during authentication")
        raise RuntimeSetupError(
            f"kafka.sasl_password: the broker at {server} refused user "
            f"{security.sasl_username!r} ({security.sasl_mechanism}): {detail.strip()}; "
            "check kafka.sasl_username and the password (sasl_password or sasl_password_file)")
    if "Handshake failed: " in failure:
        detail = failure.split("Handshake failed: ", 1)[1]
        raise RuntimeSetupError(
            f"kafka.ssl_cafile: TLS handshake with {server} failed: {detail}; check that "
            "kafka.ssl_cafile holds the CA that signed the broker's certificate and that "
            "the certificate names the host in kafka.bootstrap_servers")
