"""SASL/SCRAM over TLS against the real broker (issue 12, must-hold #7, Kafka part): the
service configured with ``kafka.security_protocol: SASL_SSL``, SCRAM-SHA-512, a password
from a file or the environment and the test's own CA runs end to end with the embedded
run's weights; a wrong password or a foreign CA fails within seconds, with one line."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.kafka.helpers import (
    REPO,
    assert_versions_once_each,
    by_stream,
    embedded_reference,
    make_topics_at,
    produce_inputs,
    read_topic,
    write_input,
    write_kafka_config,
)
from tests.kafka.secure_broker import MECHANISM, USERNAME, make_certificates, secure_broker

PASSWORD = "scram-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """(broker, certificates): a broker with a SASL_SSL listener on ``broker.secure_port``."""
    workdir = tmp_path_factory.mktemp("sasl-ssl")
    certificates = make_certificates(workdir / "certificates")
    broker = secure_broker(workdir / "broker", certificates, PASSWORD)
    atexit.register(broker.kill)
    broker.start()
    try:
        yield broker, certificates
    finally:
        broker.stop()


def make_plain_topics(broker) -> dict[str, str]:
    """Topics made through the harness's PLAINTEXT listener."""
    return make_topics_at(broker.bootstrap, "sasl", 2)


def secure_config(tmp_path, broker, certificates, topics, **security):
    settings = {"security_protocol": "SASL_SSL", "sasl_mechanism": MECHANISM,
                "sasl_username": USERNAME, "ssl_cafile": str(certificates.ca), **security}
    return write_kafka_config(tmp_path, f"127.0.0.1:{broker.secure_port}", topics,
                              checkpoint_every_records=500, **settings)


def run_cli(config_path, *args: str, env: dict[str, str] | None = None):
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "streamweights", "run", "--no-http",
                           "--config", str(config_path), *args], capture_output=True,
                          text=True, env=environment, cwd=REPO, timeout=180)


def test_sasl_scram_over_tls_run_gives_the_embedded_weights(secured, tmp_path):
    """Scenario: the inputs are written through the PLAINTEXT listener; the service is
    given only the SASL_SSL address, SCRAM-SHA-512 user and a password file (mode 0600),
    and the test CA, and runs the input bounded. We expect: exit 0, the embedded run's
    summary, and its weights under read_committed, each version once; the password is
    in neither the log nor the summary."""
    broker, certificates = secured
    lines = write_input(tmp_path / "input.jsonl", 1_000)
    reference, reference_weights = embedded_reference(tmp_path, tmp_path / "input.jsonl")
    topics = make_plain_topics(broker)
    produce_inputs(broker.bootstrap, lines, topics["predictions"], topics["labels"])
    password_file = tmp_path / "kafka-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    path = secure_config(tmp_path / "secure", broker, certificates, topics,
                         sasl_password_file=str(password_file))
    summary_path = tmp_path / "summary.json"
    result = run_cli(path, "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["complete"] and summary["records"] == len(lines)
    assert summary["streams"] == reference
    weights = by_stream(read_topic(broker.bootstrap, topics["weights"]))
    assert weights == reference_weights
    assert_versions_once_each(weights)
    assert PASSWORD not in result.stderr + summary_path.read_text()


def test_wrong_password_fails_fast_with_one_line(secured, tmp_path):
    """Scenario: the same setup, the password (from the environment, written as
    ``${KAFKA_PASSWORD}`` in the config) is wrong. We expect: exit 1 within 10 s, and
    stderr is one line naming kafka.sasl_password, the user, the mechanism, the broker's
    reason and what to check; the wrong password itself is not printed."""
    broker, certificates = secured
    topics = make_plain_topics(broker)
    path = secure_config(tmp_path, broker, certificates, topics,
                         sasl_password="${KAFKA_PASSWORD}")
    started = time.monotonic()
    result = run_cli(path, env={"KAFKA_PASSWORD": "not-the-password"})
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: kafka.sasl_password: the broker at 127.0.0.1:"
                               f"{broker.secure_port} refused user {USERNAME!r} ({MECHANISM})")
    assert lines[0].endswith("check kafka.sasl_username and the password (sasl_password or "
                             "sasl_password_file)")
    assert "not-the-password" not in result.stderr
    assert took < 10, f"took {took:.1f}s"


def test_certificate_from_another_ca_fails_fast_with_one_line(secured, tmp_path):
    """Scenario: the right password, but ``ssl_cafile`` is a CA that did not sign the
    broker's certificate. We expect: exit 1 within 10 s and one stderr line naming
    kafka.ssl_cafile and the verification failure."""
    broker, _ = secured
    other = make_certificates(tmp_path / "other-ca")
    topics = make_plain_topics(broker)
    path = secure_config(tmp_path, broker, other, topics, sasl_password="${KAFKA_PASSWORD}")
    started = time.monotonic()
    result = run_cli(path, env={"KAFKA_PASSWORD": PASSWORD})
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: kafka.ssl_cafile: TLS handshake with 127.0.0.1:")
    assert "CERTIFICATE_VERIFY_FAILED" in lines[0]
    assert time.monotonic() - started < 10
