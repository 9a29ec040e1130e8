# syntax=docker/dockerfile:1
# streamweights service image: `docker build -t streamweights .` from the repository root.
#
# Stage 1 builds the package (its Rust core, native/, compiled by maturin with Debian's
# cargo) and its dependencies into a virtual environment; stage 2 copies only that
# environment and the entry point onto a slim Python base, so no compiler, cargo registry,
# pip cache or source tree reaches the final image. The service runs as PID 1
# under an unprivileged user: SIGTERM (Kubernetes' stop signal) makes it finish the
# current record, write a checkpoint (Kafka mode: commit the open transaction with the
# snapshots and offsets) and exit 0; terminationGracePeriodSeconds in k8s/ leaves room.

# The base of both stages: any Debian-like image with `python` (3.11+) and its venv module.
# tests/deploy/test_image_build.py builds with --build-arg PYTHON_IMAGE=<a bookworm base
# made by mmdebstrap from Debian's packages>, as no image registry is reachable there.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's Rust toolchain (bookworm: rustc 1.63; native/Cargo.lock is resolved for it).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cargo gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# Bookworm's cargo (1.63) reads crates.io's index from GitHub by default; its sparse HTTP
# index (index.crates.io, stable from cargo 1.68) is much faster and needs no git, so
# turn that then-unstable switch on for cargo alone (not rustc).
ENV CARGO_UNSTABLE_SPARSE_REGISTRY=true \
    __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY native/Cargo.toml native/Cargo.lock ./native/
COPY native/src ./native/src
COPY streamweights ./streamweights
RUN /opt/venv/bin/pip install --no-compile . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
# The endpoints listen on every interface of the container; /metrics and the probes are
# open, /v1/... should require a token: run with -e STREAMWEIGHTS_HTTP_TOKEN=<secret> (or
# http.token_file in the config; README.md, "HTTP endpoints").
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMWEIGHTS_CONFIG=/etc/streamweights/config.yaml \
    STREAMWEIGHTS_HTTP_HOST=0.0.0.0
RUN groupadd --system --gid 10001 streamweights \
    && useradd --system --uid 10001 --gid streamweights --home-dir /var/lib/streamweights \
       --create-home --shell /usr/sbin/nologin streamweights
COPY --from=build /opt/venv /opt/venv
COPY services/ /app/services/
COPY configs/demo.yaml /etc/streamweights/config.yaml
USER 10001:10001
WORKDIR /var/lib/streamweights
EXPOSE 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"]
ENTRYPOINT ["python", "/app/services/streamweights_service.py"]
