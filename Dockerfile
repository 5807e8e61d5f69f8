# syntax=docker/dockerfile:1
# aml-event-worker container image.
#
#   docker build -t aml-event-worker .
#   docker run --rm --read-only --tmpfs /tmp aml-event-worker --help
#
# BASE_IMAGE is a pinned tag; pin it by digest (python:3.11.10-slim-bookworm@sha256:...) in CI
# where the registry is reachable.
ARG BASE_IMAGE=python:3.11.10-slim-bookworm

# --- builder: build the project's wheel and install it with its dependencies into a venv ---
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker/ worker/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/*.whl \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- runtime: the venv only, as a non-root user, nothing written outside /tmp ---
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
RUN groupadd --system --gid 10001 aml-worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin aml-worker
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# /healthz, /readyz and /metrics (AML_WORKER_HTTP_PORT); Kubernetes probes do the health checks
EXPOSE 8080
ENTRYPOINT ["aml-event-worker"]
CMD ["run"]
