"""Running planned actions: retries, per-object order, concurrency, ledger, dead letters (§5).

Each released event becomes one *job*: its actions, in order. Jobs of the same object are
chained (a later event of an object waits for the earlier one, also while it retries), jobs
of different objects run concurrently under the worker-wide `AML_WORKER_MAX_INFLIGHT` limit
and each action's own `concurrency`. A job ends dispatched or dead-lettered, never stuck:
after the last attempt (or at once for a permanent error) the event, rule, action, masked
parameters, error and attempts go to the dead-letter store.

What a crash may repeat (DESIGN §5): targets that dedupe by the idempotency key (AML job
name, webhook `Idempotency-Key`) see a repeat as the same request; email, Event Hubs
forwarding and Data Factory runs are recorded in the partition's *ledger* right after they
succeed, and skipped when the ledger already has their key, so only a crash between success
and that write can repeat one; `log` lines may repeat.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from worker import tracing
from worker.actions import Executor
from worker.checkpoints import BlobPartitionStore, StateHandle
from worker.errors import ActionError, CheckpointError
from worker.plan import PlannedAction
from worker.templates import Redactor, RenderError, mask, reveal

__all__ = ["LEDGER_TYPES", "Delivery", "Ledger", "Limits"]

log = structlog.get_logger(__name__)

LEDGER_TYPES = frozenset({"email", "eventhub", "adf_pipeline"})
COMPACT_AFTER = 200  # ledger records before expired entries are dropped at load
COMPACT_BLOCKS = 1000  # ledger blocks before a running worker folds them into one


class Ledger:
    """Idempotency keys of completed ledger-protected actions of one partition."""

    def __init__(self, store: BlobPartitionStore, partition_id: str, retention_s: float) -> None:
        self.store = store
        self.partition_id = partition_id
        self.retention_s = retention_s
        self.handle = StateHandle(partition_id)
        self.done: dict[str, float] = {}
        self.lock = asyncio.Lock()
        self._queue: list[tuple[list[Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        self.handle = await self.store.load_ledger(self.partition_id)
        horizon = time.time() - self.retention_s
        for record in self.handle.records:
            for key, at, *_ in record.get("entries", []):
                if at >= horizon:
                    self.done[key] = at
        if len(self.handle.records) > COMPACT_AFTER:
            entries = [[key, at] for key, at in self.done.items()]
            await self.store.compact_ledger(self.handle, {"kind": "snapshot", "entries": entries})

    def __contains__(self, key: str) -> bool:
        return key in self.done

    async def record(self, planned: PlannedAction) -> None:
        """Record a success. Concurrent successes share one commit (group commit): the
        window in which a crash can repeat an action is one blob write, not a queue."""
        event = planned.event
        entry = [
            planned.key, time.time(), planned.action.type, planned.rule, event.id,
            event.sequence_number,
        ]  # fmt: skip
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_queued())
        await future
        self.done[planned.key] = entry[1]

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            entries = [entry for entry, _ in batch]
            try:
                async with self.lock:
                    await self._commit(entries)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _commit(self, entries: list[list[Any]]) -> None:
        if len(self.handle.blocks) >= COMPACT_BLOCKS:
            # Each commit lists every block and a blob holds at most 50,000: fold the live
            # entries into one snapshot block long before that.
            horizon = time.time() - self.retention_s
            live = [[k, at] for k, at in self.done.items() if at >= horizon]
            live += [entry[:2] for entry in entries]
            await self.store.compact_ledger(self.handle, {"kind": "snapshot", "entries": live})
        else:
            await self.store.append_ledger(self.handle, {"kind": "entries", "entries": entries})


@dataclass(frozen=True, slots=True)
class Limits:
    """Shared across partitions: the worker-wide in-flight cap and per-action caps."""

    inflight: asyncio.Semaphore
    per_action: dict[tuple[str, int], asyncio.Semaphore]

    @classmethod
    def create(cls, max_inflight: int) -> Limits:
        return cls(asyncio.Semaphore(max_inflight), {})

    def for_action(self, planned: PlannedAction) -> asyncio.Semaphore | None:
        if planned.action.concurrency is None:
            return None
        slot = (planned.rule, planned.action.index)
        if slot not in self.per_action:
            self.per_action[slot] = asyncio.Semaphore(planned.action.concurrency)
        return self.per_action[slot]


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ActionError) and exc.retryable


class Delivery:
    """The jobs of one partition."""

    def __init__(
        self,
        partition_id: str,
        executors: Mapping[str, Executor],
        limits: Limits,
        *,
        environ: Mapping[str, str],
        ledger: Ledger | None,
        dead_letter: Callable[[str, dict[str, Any]], Awaitable[None]],
        on_result: Callable[[str, PlannedAction, str], None] = lambda *_: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Any = None,
    ) -> None:
        self.partition_id = partition_id
        self.executors = executors
        self.limits = limits
        self.environ = environ
        self.ledger = ledger
        self.dead_letter = dead_letter
        self.on_result = on_result
        self.sleep = sleep
        self.metrics = metrics
        self._chains: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # set whenever a job ends

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def submit(
        self,
        key: tuple[str, str],
        actions: list[PlannedAction],
        done: Callable[[], None],
        *,
        span: Any = None,
    ) -> asyncio.Task[None]:
        """Start one event's actions after the previous job of the same object.

        `span` is the event's trace span (tracing on): the action spans become its children
        and the job ends it, however late the job runs after the event was received.
        """
        previous = self._chains.get(key)
        task = asyncio.ensure_future(self._job(previous, actions, done, span))
        self._chains[key] = task
        self._jobs.add(task)

        def forget(finished: asyncio.Task[None]) -> None:
            self._jobs.discard(finished)
            self._room.set()
            if self._chains.get(key) is finished:
                del self._chains[key]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("job_crashed", error=repr(finished.exception()))

        task.add_done_callback(forget)
        return task

    async def drain(self, deadline_s: float | None = None) -> bool:
        """Wait for every job; False when the deadline left some unfinished."""
        if not self._jobs:
            return True
        _, pending = await asyncio.wait(set(self._jobs), timeout=deadline_s)
        return not pending

    async def wait_below(self, limit: int) -> None:
        """Backpressure: return once fewer than `limit` jobs are in flight (woken by the
        jobs that end, not by scanning them all on every event)."""
        while len(self._jobs) >= limit:
            self._room.clear()
            await self._room.wait()

    async def cancel(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    async def _job(
        self,
        previous: asyncio.Task[None] | None,
        actions: list[PlannedAction],
        done: Callable[[], None],
        span: Any = None,
    ) -> None:
        results: list[str] = []
        try:
            if previous is not None:
                await asyncio.wait({previous})  # its failure is its own: order, not fate
            event = actions[0].event
            # Every line logged about this event carries where it came from (a task's context).
            structlog.contextvars.bind_contextvars(
                partition_id=event.partition_id,
                sequence_number=event.sequence_number,
                event_id=event.id,
                subject=event.subject,
            )
            for planned in actions:
                results.append(await self.run_one(planned, parent=span))
            done()
        finally:
            if span is not None:
                tracing.end_event(span, results)

    async def run_one(self, planned: PlannedAction, *, parent: Any = None) -> str:
        """Run one action to its end: 'done', 'skipped' (ledger) or 'dead_lettered'.

        With tracing on, the run is one span (a child of `parent`, the event's span), current
        while the executor runs so that the SDK calls it makes nest under it.
        """
        if not tracing.enabled():
            return await self._run_one(planned, None)
        span = tracing.start_action(planned, parent)
        with tracing.activated(span):
            try:
                return await self._run_one(planned, span)
            except BaseException:
                span.end()  # cancelled (shutdown): still `pending` in the saved state
                raise

    async def _run_one(self, planned: PlannedAction, span: Any) -> str:
        if (
            self.ledger is not None
            and planned.action.type in LEDGER_TYPES
            and planned.key in self.ledger
        ):
            self.on_result("skipped", planned, "")
            if span is not None:
                tracing.action_done(span, "skipped", 0)
            return "skipped"
        executor = self.executors[planned.action.type]
        attempts = 0
        try:
            params = reveal(planned.params, self.environ)
        except RenderError as exc:
            await self._give_up(planned, str(exc), attempts)
            if span is not None:
                tracing.action_done(span, "dead_lettered", 0, str(exc), "render_error")
            return "dead_lettered"
        retry = planned.action.retry
        facts: dict[str, Any] | None = None
        # A plain loop: most actions succeed at once, and per-action retry machinery cost
        # more than a `log` action itself.
        for attempts in range(1, retry.attempts + 1):
            try:
                facts = await self._attempt(executor, planned, params)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not _retryable(exc) or attempts >= retry.attempts:
                    # after the last attempt, or a permanent error
                    detail = _describe(exc, planned, params)
                    await self._give_up(planned, detail, attempts)
                    if span is not None:
                        tracing.action_done(span, "dead_lettered", attempts, detail, _kind(exc))
                    return "dead_lettered"
                await self._pause(planned, span, attempts, exc)
        if self.ledger is not None and planned.action.type in LEDGER_TYPES:
            await self._record(planned)
        # A `log` action's own line is its record; a second line per event would double it.
        (log.debug if planned.action.type == "log" else log.info)(
            "action_done",
            rule=planned.rule,
            action=planned.action.type,
            idempotency_key=planned.key,
            attempts=attempts,
            **(facts or {}),
        )
        self.on_result("done", planned, "")
        if span is not None:
            tracing.action_done(span, "done", attempts)
        return "done"

    async def _pause(
        self, planned: PlannedAction, span: Any, attempt: int, error: Exception
    ) -> None:
        """Back off after a retryable failure: exponential with jitter, or longer when the
        target asked for it (`Retry-After`, capped at an hour)."""
        retry = planned.action.retry
        backoff = min(retry.max_s, retry.initial_s * 2 ** (attempt - 1))
        backoff = random.uniform(backoff / 2, backoff)
        after = getattr(error, "retry_after_s", None)
        if after:
            backoff = max(backoff, min(after, 3600.0))
        if self.metrics is not None:
            self.metrics.retries.labels(planned.action.type).inc()
        if span is not None:
            # An unexpected exception's text is not redacted here: its type name only.
            shown = str(error) if isinstance(error, ActionError) else type(error).__name__
            tracing.action_retry(span, attempt, shown)
        log.debug(
            "action_retry",
            rule=planned.rule,
            action=planned.action.type,
            attempt=attempt,
            error=str(error),
            retry_in_s=round(backoff, 3),
        )
        await self.sleep(backoff)

    async def _attempt(
        self, executor: Executor, planned: PlannedAction, params: Any
    ) -> dict[str, Any] | None:
        per_action = self.limits.for_action(planned)
        async with self.limits.inflight:
            started = time.monotonic()
            try:
                if per_action is None:
                    return await executor.execute(planned, params)
                async with per_action:
                    return await executor.execute(planned, params)
            finally:
                if self.metrics is not None:
                    seconds = time.monotonic() - started
                    self.metrics.action_seconds.labels(planned.action.type).observe(seconds)

    async def _record(self, planned: PlannedAction) -> None:
        """The ledger write must land: a lost entry could repeat the action after a crash."""
        assert self.ledger is not None
        delay = 0.5
        while True:
            try:
                await self.ledger.record(planned)
                return
            except CheckpointError as exc:
                log.warning("ledger_write_failed", error=str(exc), retry_in_s=delay)
                await self.sleep(delay)
                delay = min(delay * 2, 30)

    async def _give_up(self, planned: PlannedAction, error: str, attempts: int) -> None:
        log.warning(
            "action_dead_lettered",
            rule=planned.rule,
            action=planned.action.type,
            idempotency_key=planned.key,
            attempts=attempts,
            error=error,
        )
        event = planned.event
        await self.dead_letter(
            f"{event.sequence_number}-{planned.key}",
            {
                "kind": "action_failed",
                "reason": error,
                "attempts": attempts,
                "rule": planned.rule,
                "action": planned.action.type,
                "action_index": planned.action.index,
                "action_id": planned.action.id,
                "idempotency_key": planned.key,
                "params": mask(planned.params),
                "event_id": event.id,
                "event_type": event.type,
                "subject": event.subject,
                "source": event.origin.as_dict(),
                "event": event.as_received(),
                "dead_lettered_at": time.time(),
            },
        )
        self.on_result("dead_lettered", planned, error)


def _kind(exc: BaseException) -> str:
    """A low-cardinality error class for traces (`error.type`)."""
    if isinstance(exc, ActionError):
        return "retries_exhausted" if exc.retryable else "permanent_error"
    return type(exc).__qualname__


def _describe(exc: BaseException, planned: PlannedAction, params: Any) -> str:
    """An action's failure, for its dead letter, log and span. Executors word (and redact)
    their own `ActionError`s; anything else is an unexpected exception whose text may quote
    what was sent, so it is redacted here, then cut (DESIGN §7)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ActionError):
        return text
    redact = Redactor(mask(planned.params), params)
    return redact.excerpt(f"{type(exc).__name__}: {text}", 500)
