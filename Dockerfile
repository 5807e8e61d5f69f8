# syntax=docker/dockerfile:1
# aml-event-worker container image.
#
#   docker build -t aml-event-worker .
#   docker run --rm --read-only --tmpfs /tmp aml-event-worker --help
#   make image-check     # no Docker: debootstrap base + buildah, see scripts/image-check.sh
#
# BASE_IMAGE is a pinned tag; pin it by digest (python:3.11.10-slim-bookworm@sha256:...) in CI
# where the registry is reachable. Any Debian-like base with python3 >= 3.11 and its venv module
# works (image-check builds on a debootstrapped bookworm with python3-venv): the build calls only
# `python3 -m venv`, `groupadd` and `useradd`.
ARG BASE_IMAGE=python:3.11.10-slim-bookworm

# --- builder: the project and its pinned dependencies (constraints.txt) in a venv ---
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    PYTHONUNBUFFERED=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY worker/ worker/
# The optional build secret pip_cert is a CA bundle for a TLS-intercepting proxy between the
# build and PyPI (image-check passes the host's); it is mounted for this step only, never stored.
# pip runs from its own venv (/opt/pip) so the runtime venv holds exactly the pinned
# distributions; PIP_CONSTRAINT also pins the isolated build backend (setuptools). The
# unchecked-hash .pyc files stay valid whatever mtimes the copy gives the sources, so the
# read-only runtime never needs to write one.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-compile /src \
    && /opt/pip/bin/pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib

# --- runtime: the venv only, as a non-root user, nothing written outside /tmp ---
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="aml-event-worker" \
      org.opencontainers.image.description="Turns Azure Machine Learning events (Event Grid via Event Hubs) into actions" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
# /etc/aml-worker: where the deployment mounts the rules (AML_WORKER_RULES=/etc/aml-worker/...).
RUN groupadd --gid 10001 aml-worker \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin aml-worker \
    && mkdir -p /etc/aml-worker
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# /healthz, /readyz and /metrics (AML_WORKER_HTTP_PORT); Kubernetes probes do the health checks
EXPOSE 8080
# run drains in-flight actions and checkpoints on SIGTERM (AML_WORKER_SHUTDOWN_TIMEOUT)
STOPSIGNAL SIGTERM
ENTRYPOINT ["aml-event-worker"]
CMD ["run"]
