"""A broker with a SASL_SSL listener (SCRAM-SHA-512 over TLS), certificates made here.

``make_certificates(folder)`` uses ``openssl`` to make a throw-away CA and a broker
certificate signed by it (subject alternative names ``DNS:localhost`` and
``IP:127.0.0.1``, so clients verify the host name), and packs the broker's key and chain
into a PKCS12 keystore, which Kafka 4.4 reads as ``ssl.keystore.type=PKCS12``.
``secure_broker(workdir, certificates)`` is a ``KafkaBroker`` with two client listeners:
``SASL_SSL`` (what the service under test is given) and ``PLAINTEXT`` on loopback (what
the harness uses to start, check and create topics). The SCRAM credential is created
when KRaft storage is formatted (``kafka-storage format --add-scram``), the KRaft way:
there is no ZooKeeper to add it to later.
"""

from __future__ import annotations

import pathlib
import secrets
import shutil
import subprocess
from dataclasses import dataclass

from tests.kafka.broker import BrokerSetupError, KafkaBroker, free_port

USERNAME = "streamweights"
MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class Certificates:
    ca: pathlib.Path
    keystore: pathlib.Path
    keystore_password: str


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    completed = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                               check=False, timeout=60)
    if completed.returncode != 0:
        raise BrokerSetupError(f"`openssl {' '.join(args)}` failed: {completed.stderr.strip()}")


def make_certificates(folder: pathlib.Path) -> Certificates:
    """A CA (``ca.pem``) and a broker keystore (``broker.p12``) signed by it."""
    if shutil.which("openssl") is None:
        raise BrokerSetupError("the TLS test makes certificates with `openssl` (Debian: "
                               "apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=streamweights test CA", cwd=folder)
    _openssl("req", *curve, "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=folder)
    (folder / "broker.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext",
             cwd=folder)
    password = secrets.token_hex(12)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
             "-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12",
             "-passout", f"pass:{password}", cwd=folder)
    return Certificates(folder / "ca.pem", folder / "broker.p12", password)


def secure_broker(workdir: pathlib.Path, certificates: Certificates,
                  password: str) -> KafkaBroker:
    """A broker whose ``secure_port`` speaks SASL_SSL with SCRAM user ``USERNAME``."""
    broker = KafkaBroker(workdir, format_arguments=(
        "--add-scram", f"{MECHANISM}=[name={USERNAME},password={password}]"))
    secure_port = free_port()
    while secure_port in (broker.port, broker.controller_port):
        secure_port = free_port()
    broker.secure_port = secure_port  # type: ignore[attr-defined]
    broker.overrides.update({
        "listeners": f"PLAINTEXT://127.0.0.1:{broker.port},SASL_SSL://127.0.0.1:{secure_port},"
                     f"CONTROLLER://127.0.0.1:{broker.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker.port},"
                                f"SASL_SSL://127.0.0.1:{secure_port}",
        "listener.security.protocol.map":
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(certificates.keystore),
        "ssl.keystore.password": certificates.keystore_password,
        "ssl.key.password": certificates.keystore_password,
        "ssl.client.auth": "none",
    })
    return broker
