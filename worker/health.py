"""Health, readiness and Prometheus metrics over HTTP (`AML_WORKER_HTTP_PORT`, default 8080).

- `/healthz`: the process is alive and its event loop is not stuck (a heartbeat task must
  have run recently; a blocked loop cannot answer at all).
- `/readyz`: rules loaded, storage reachable (the last blob operation succeeded), at least
  one partition owned (or start-up still within one load-balancing window), no stalled
  partition (lag but nothing delivered for longer than the stall threshold).
- `/metrics`: Prometheus text format. The outcome labels are the summary names of
  DESIGN §6, so a dashboard and the dry-run summary speak the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from worker.pipeline import Step

__all__ = ["HealthServer", "Metrics"]

log = structlog.get_logger(__name__)


class Metrics:
    """The worker's Prometheus collectors, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "aml_worker_messages", "Event Hubs messages read", ["partition"], registry=r
        )
        self.invalid = Counter(
            "aml_worker_invalid", "Rejected bodies or array elements", ["partition"], registry=r
        )
        self.events = Counter(
            "aml_worker_events", "Decoded events by outcome", ["outcome"], registry=r
        )
        self.throttled = Counter(
            "aml_worker_throttled", "Actions skipped by a rule's throttle", ["rule"], registry=r
        )
        self.actions = Counter(
            "aml_worker_actions", "Actions by type and result", ["type", "result"], registry=r
        )
        self.action_seconds = Histogram(
            "aml_worker_action_duration_seconds",
            "Time of one action attempt",
            ["type"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.retries = Counter("aml_worker_action_retries", "Action retries", ["type"], registry=r)
        self.dead_letters = Counter(
            "aml_worker_dead_letters", "Dead letters written", ["kind"], registry=r
        )
        self.dead_letter_write_failures = Counter(
            "aml_worker_dead_letter_write_failures",
            "Dead-letter blob writes that failed (retried: the checkpoint waits for them)",
            registry=r,
        )
        self.checkpoints = Counter(
            "aml_worker_checkpoint_writes", "Checkpoint writes", ["partition"], registry=r
        )
        self.owned = Gauge("aml_worker_owned_partitions", "Partitions owned", registry=r)
        self.lag = Gauge(
            "aml_worker_partition_lag",
            "Last enqueued sequence number minus the checkpointed one",
            ["partition"],
            registry=r,
        )
        self.held = Gauge(
            "aml_worker_held_events", "Events held back for reordering", ["partition"], registry=r
        )
        self.checkpoint_age = Gauge(
            "aml_worker_checkpoint_age_seconds",
            "Seconds since the partition's checkpoint last moved",
            ["partition"],
            registry=r,
        )
        self.split_objects = Counter(
            "aml_worker_objects_on_several_partitions",
            "Objects seen on more than one partition (PartitionKey not set to the subject?)",
            registry=r,
        )
        self.stalled = Gauge(
            "aml_worker_stalled_partitions",
            "Owned partitions with unread events that delivered nothing for the stall timeout",
            registry=r,
        )
        self.reconnects = Counter(
            "aml_worker_partition_reconnects",
            "Stalled partitions whose receiver was reconnected",
            ["partition"],
            registry=r,
        )
        self.ready = Gauge("aml_worker_ready", "1 when /readyz answers 200", registry=r)

    def step(self, partition_id: str, step: Step, messages: int = 0) -> None:
        if messages:
            self.messages.labels(partition_id).inc(messages)
        if step.rejections:
            self.invalid.labels(partition_id).inc(len(step.rejections))
        for decision in step.decisions:
            self.events.labels(decision.outcome.value).inc()
            if decision.throttled:
                rule = decision.actions[0].rule if decision.actions else "-"
                self.throttled.labels(rule).inc(decision.throttled)

    def forget_partition(self, partition_id: str) -> None:
        """Drop a partition's gauges when it leaves this replica: a frozen last value would
        be read as this replica's view next to the new owner's."""
        for gauge in (self.lag, self.held, self.checkpoint_age):
            with contextlib.suppress(KeyError):
                gauge.remove(partition_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """The HTTP endpoints; `state` is asked for readiness facts on each request."""

    def __init__(self, metrics: Metrics, state: Any, *, host: str, port: int) -> None:
        self.metrics = metrics
        self.state = state
        self.host = host
        self.port = port
        self.heartbeat = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._beat: asyncio.Task[None] | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._beat = asyncio.ensure_future(self._heartbeat())
        log.info("http_listening", port=self.port, paths=["/healthz", "/readyz", "/metrics"])
        return self.port

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _heartbeat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(1)

    async def _healthz(self, request: web.Request) -> web.Response:
        stuck = time.monotonic() - self.heartbeat
        if stuck > 30:
            return web.json_response({"status": "event loop stuck", "seconds": stuck}, status=503)
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = self.state.readiness_problems()
        self.metrics.ready.set(0 if problems else 1)
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics(self, request: web.Request) -> web.Response:
        # Without probes nothing else asks: `aml_worker_ready` must be current on a scrape.
        self.metrics.ready.set(0 if self.state.readiness_problems() else 1)
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
