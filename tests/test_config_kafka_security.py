"""The Kafka security settings (``kafka.security_protocol``, ``sasl_*``, ``ssl_*``): what
they pass to kafka-python, and every half-configured combination refused at load time
(so ``streamweights validate`` catches it) with the field's path."""

from __future__ import annotations

import pytest

from streamweights.config import ConfigError, load_config, parse_config
from streamweights.runtime.kafka_runtime import client_settings

STREAM = {"name": "fraud", "models": ["gbm", "mlp"]}


def _document(**kafka):
    return {"source": {"kind": "kafka"}, "streams": [STREAM],
            "kafka": {"bootstrap_servers": "broker:9093", **kafka}}


def _error(**kafka) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(_document(**kafka))
    return str(caught.value)


def test_sasl_ssl_settings_reach_every_client_and_the_password_stays_out_of_repr(tmp_path):
    """Scenario: SASL_SSL with SCRAM-SHA-512, the password in a file (trailing newline,
    as `kubectl create secret` and editors leave it) and a CA file. We expect: each
    kafka-python client class gets the protocol, mechanism, user, password and CA, with
    host-name checks on; the password is not in the config's repr."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    password = tmp_path / "password"
    password.write_text("s3cret-value\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = parse_config(_document(security_protocol="sasl_ssl", sasl_mechanism="SCRAM-SHA-512",
                                    sasl_username="streamweights",
                                    sasl_password_file=str(password), ssl_cafile=str(ca)))
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "streamweights", "sasl_plain_password": "s3cret-value",
                "ssl_cafile": str(ca), "ssl_check_hostname": True}
    for client in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
        assert client_settings(config.kafka, client) == expected
    assert "s3cret-value" not in repr(config)


def test_password_from_the_environment(tmp_path):
    """Scenario: ``sasl_password: "${KAFKA_PASSWORD}"`` in a config file. We expect: the
    variable's value is the password; unset, the error names the field."""
    path = tmp_path / "config.yaml"
    path.write_text("source: {kind: kafka}\nstreams: [{name: s, models: [a, b]}]\n"
                    "kafka: {bootstrap_servers: 'b:9092', security_protocol: SASL_PLAINTEXT,\n"
                    "        sasl_mechanism: PLAIN, sasl_username: u,\n"
                    "        sasl_password: '${KAFKA_PASSWORD}'}\n")
    config = load_config(path, {"KAFKA_PASSWORD": "from-env"})
    assert config.kafka.security.sasl_password == "from-env"
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password: environment variable "
                                          "KAFKA_PASSWORD is not set"):
        load_config(path, {})


def test_plaintext_passes_nothing():
    """Scenario: no security keys. We expect: no security setting reaches the clients
    (kafka-python's own defaults apply, as before these keys existed)."""
    from kafka import KafkaProducer

    config = parse_config(_document())
    assert config.kafka.security.security_protocol == "PLAINTEXT"
    assert client_settings(config.kafka, KafkaProducer) == {}


@pytest.mark.parametrize(("settings", "message"), [
    ({"security_protocol": "TLS"}, "kafka.security_protocol: must be one of PLAINTEXT, SSL, "
                                   "SASL_PLAINTEXT, SASL_SSL, got 'TLS'"),
    ({"security_protocol": "SASL_SSL"}, "kafka.sasl_mechanism: must be one of PLAIN, "
                                        "SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": "x"},
     "kafka.sasl_username: required with sasl_mechanism PLAIN"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
     "kafka.sasl_password: give exactly one of sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password": "x", "sasl_password_file": "/p"},
     "kafka.sasl_password: give exactly one of sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password_file": "/nonexistent/password"},
     "kafka.sasl_password_file: cannot read '/nonexistent/password'"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u",
      "sasl_password": ""}, "kafka.sasl_password: the password is empty"),
    ({"sasl_username": "u"}, "kafka.sasl_username: only used with security_protocol SASL_SSL"),
    ({"ssl_cafile": "/ca.pem"}, "kafka.ssl_cafile: only used with security_protocol SSL"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "kafka.ssl_cafile: no such file '/nonexistent/ca.pem'"),
    ({"client": {"sasl_plain_password": "x"}},
     "kafka.client.sasl_plain_password: set the security settings beside it"),
    ({"security_protocol": "SSL", "ssl_check_hostname": "no"},
     "kafka.ssl_check_hostname: expected bool"),
])
def test_half_configured_security_is_refused_naming_the_field(settings, message):
    assert _error(**settings).startswith(message)
