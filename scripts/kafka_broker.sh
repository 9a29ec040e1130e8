#!/usr/bin/env bash
# Fetch (Maven, cached in .cache/kafka/) and run a real single-node KRaft Kafka broker,
# the same one the tests start.
#   scripts/kafka_broker.sh fetch            # download the broker jars once
#   scripts/kafka_broker.sh run [--workdir D] # start on free loopback ports; Ctrl-C stops
# Needs Java 17+ and Maven. Environment: STREAMWEIGHTS_KAFKA_VERSION (default 4.4.0),
# STREAMWEIGHTS_KAFKA_CACHE (jar cache root), STREAMWEIGHTS_MAVEN_REPO (Maven local repo).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python=.venv/bin/python
exec "$python" -m tests.kafka.broker "$@"
