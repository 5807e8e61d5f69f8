"""`replay --source eventhub` and `--source capture:`: re-run history through the rules.

A backfill runs beside the live worker without disturbing it: its own consumer group
(never the live one, unless forced), fresh dedupe and order state, no load balancing (it
reads the partitions it is told to, each from its start to its end), and read access to
the live group's ledger so that ledger-protected actions the live worker already ran are
not repeated. Idempotency keys are the live ones, so idempotent targets dedupe the rest.
It is finite: each partition ends at `--until` (default: its last event at start), and
what the reorder buffer still holds is released then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import structlog

from worker.actions import Executor
from worker.checkpoints import BlobPartitionStore
from worker.consumer import origin_of
from worker.delivery import LEDGER_TYPES, Delivery, Ledger, Limits
from worker.errors import ConfigError, SourceError
from worker.events import Origin
from worker.pipeline import PartitionPipeline, Step, Summary
from worker.positions import Position, PositionKind, StartPositions
from worker.replay import dead_letter_for_rejection, json_line
from worker.rewind import read_snapshot
from worker.rules import RuleSet
from worker.settings import Settings
from worker.state import Mark, Progress

__all__ = ["BackfillPlan", "Bounds", "backfill_eventhub", "resolve_bounds"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Bounds:
    """One partition's slice of history: where to start and where to stop (inclusive)."""

    partition_id: str
    start: Any  # SDK starting_position
    inclusive: bool
    last_sequence_number: int  # stop once this one is processed (the end at start-up)
    until_time: datetime | None = None  # stop before events enqueued after this
    until_offset: str | None = None
    empty: bool = False
    first_sequence_number: int = 0

    @property
    def total(self) -> int:
        """Messages in the slice (an estimate for time/offset ends)."""
        return (
            0 if self.empty else max(0, self.last_sequence_number - self.first_sequence_number + 1)
        )

    def finished_by(self, sequence_number: int, offset: str, enqueued: datetime | None) -> bool:
        if sequence_number >= self.last_sequence_number:
            return True
        return self.until_offset is not None and _offset_at_or_after(offset, self.until_offset)

    def beyond(self, enqueued: datetime | None) -> bool:
        return self.until_time is not None and enqueued is not None and enqueued > self.until_time


def _offset_at_or_after(offset: str, target: str) -> bool:
    try:
        return int(offset) >= int(target)
    except ValueError:
        return offset == target


@dataclass(slots=True)
class BackfillPlan:
    """What a backfill did, partition by partition."""

    summary: Summary = field(default_factory=Summary)
    partitions: dict[str, int] = field(default_factory=dict)  # messages per partition
    actions: int = 0
    skipped: int = 0
    failures: int = 0

    def count(self, outcome: str, *_: Any) -> None:
        if outcome == "done":
            self.actions += 1
        elif outcome == "skipped":
            self.skipped += 1
        else:
            self.failures += 1


async def resolve_bounds(
    client: Any,
    partition_ids: list[str],
    *,
    start: StartPositions | None,
    checkpoints: Mapping[str, tuple[int, str]] | None,
    until: StartPositions | None,
) -> list[Bounds]:
    """Start and end per partition; `checkpoints` (live group or snapshot) when given."""
    bounds = []
    for pid in partition_ids:
        props = await client.get_partition_properties(pid)
        last = int(props["last_enqueued_sequence_number"])
        if checkpoints is not None:
            mark = checkpoints.get(pid)
            begin: Any = mark[1] if mark else "-1"
            inclusive = False
            first = mark[0] + 1 if mark else int(props["beginning_sequence_number"])
        else:
            assert start is not None
            position = start.for_partition(pid)
            if position.kind is PositionKind.LATEST:
                begin, inclusive, first = last, True, last
            else:
                begin, inclusive = position.sdk()
                first = (
                    position.value
                    if position.kind is PositionKind.SEQUENCE
                    else int(props["beginning_sequence_number"])
                )
        # Partitions a per-partition --until does not name have no end but their last event.
        named = until is not None and (not until.partitions or pid in until.partitions)
        end = until.for_partition(pid) if named and until else Position(PositionKind.LATEST)
        stop, until_time, until_offset = last, None, None
        if end.kind is PositionKind.SEQUENCE:
            stop = min(last, int(end.value))
        elif end.kind is PositionKind.TIME:
            until_time = end.value
        elif end.kind is PositionKind.OFFSET:
            until_offset = str(end.value)
        elif end.kind is PositionKind.EARLIEST:
            stop = -1
        empty = bool(props.get("is_empty")) or last < 0 or stop < first
        bounds.append(
            Bounds(pid, begin, inclusive, stop, until_time, until_offset, empty, max(first, 0))
        )
    return bounds


class _PartitionRun:
    """One partition of a backfill: pipeline, plan file or delivery, finish detection."""

    def __init__(
        self,
        bounds: Bounds,
        ruleset: RuleSet,
        *,
        plan: IO[str] | None,
        delivery: Delivery | None,
        dead_letter: Callable[[str, dict[str, Any]], Any],
        save: Callable[[str, Mark], Awaitable[None]] | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.bounds = bounds
        self.pipeline = PartitionPipeline(ruleset)
        self.plan = plan
        self.delivery = delivery
        self.dead_letter = dead_letter
        self.done = asyncio.Event()
        self.messages = 0
        self.started = time.monotonic()
        # `--resume`: the replay group's checkpoint is the low watermark of finished
        # messages (held and in-flight events hold it back), saved at most every interval.
        self.progress = Progress()
        self.save = save
        self.interval_s = interval_s
        self.saved: Mark | None = None
        self.last_save = time.monotonic()
        if bounds.empty:
            self.done.set()

    async def checkpoint(self, *, force: bool = False) -> None:
        if self.save is None:
            return
        mark = self.progress.checkpoint()
        if mark is None or mark == self.saved:
            return
        if not force and time.monotonic() - self.last_save < self.interval_s:
            return
        await self.save(self.bounds.partition_id, mark)
        self.saved, self.last_save = mark, time.monotonic()

    async def handle(self, events: list[Any]) -> None:
        if self.done.is_set():
            return
        for event_data in events:
            origin, body = origin_of(event_data, self.bounds.partition_id)
            if self.bounds.beyond(origin.enqueued_time):
                await self.finish()
                return
            self.messages += 1
            step = self.pipeline.feed(body, origin)
            mark = Mark(int(event_data.sequence_number), str(event_data.offset))
            self.progress.received(mark, step.decoded)
            await self._apply(step)
            if self.bounds.finished_by(
                event_data.sequence_number, str(event_data.offset), origin.enqueued_time
            ):
                await self.finish()
                return
        await self.checkpoint()

    async def feed(self, body: bytes, origin: Origin) -> None:
        """Capture source: bodies come without the SDK."""
        self.messages += 1
        await self._apply(self.pipeline.feed(body, origin))

    async def finish(self) -> None:
        await self._apply(self.pipeline.finish())
        if self.delivery is not None:
            await self.delivery.drain()
        await self.checkpoint(force=True)
        self.done.set()

    async def _apply(self, step: Step) -> None:
        for rejection in step.rejections:
            index = "body" if rejection.index is None else str(rejection.index)
            name = f"{rejection.origin.sequence_number}-{index}"
            await self.dead_letter(name, dead_letter_for_rejection(rejection))
        for decision in step.decisions:
            seq = decision.event.sequence_number
            for failure in decision.failures:
                await self.dead_letter(f"{seq}-{failure.key}", failure.dead_letter())
            if decision.actions and self.delivery is not None and self.plan is None:
                actions = list(decision.actions)

                def finished(seq: int | None = seq) -> None:
                    if seq is not None:
                        self.progress.finished(seq)

                self.delivery.submit(decision.event.object_key, actions, finished)
                await self.delivery.wait_below(1000)
                continue
            if self.plan is not None:
                for action in decision.actions:
                    self.plan.write(json_line(action.plan_line()))
            if seq is not None:
                self.progress.finished(seq)


async def backfill_eventhub(
    settings: Settings,
    ruleset: RuleSet,
    *,
    consumer_group: str,
    start: StartPositions | None,
    from_checkpoint: bool,
    snapshot: str | None,
    resume: bool = False,
    until: StartPositions | None,
    partitions: set[str] | None,
    plan_path: str | None,
    dead_letter_path: str | None,
    executors: Mapping[str, Executor] | None,
    progress: Callable[[dict[str, tuple[int, int]]], None] | None = None,
) -> BackfillPlan:
    """Replay a hub's history. `plan_path` set = dry run (no action runs)."""
    from worker.connections import blob_container, checkpoint_store, consumer_client

    probe = consumer_client(settings, consumer_group=consumer_group)
    async with probe:
        partition_ids = await probe.get_partition_ids()
        if partitions:
            unknown = sorted(partitions - set(partition_ids))
            if unknown:
                raise ConfigError(f"--partitions: the hub has no partition {', '.join(unknown)}")
            partition_ids = [p for p in partition_ids if p in partitions]
        fqns, hub = probe._address.hostname, probe.eventhub_name  # as the SDK names blobs
        checkpoints = None
        container = None
        if from_checkpoint or resume or not plan_path:
            container = blob_container(settings)
        if container is not None and not await container.exists():
            if not settings.create_container:
                raise ConfigError(
                    f"blob container {container.url} does not exist; create it or set "
                    "AML_WORKER_CREATE_CONTAINER=true"
                )
            with contextlib.suppress(Exception):
                await container.create_container()
        own = None
        if not plan_path:
            assert container is not None
            own = BlobPartitionStore(
                container,
                checkpoint_store(settings),
                fully_qualified_namespace=fqns,
                eventhub_name=hub,
                consumer_group=consumer_group,
            )
        if resume:
            if own is None:
                raise ConfigError("--resume continues a replay that runs actions (no --dry-run)")
            checkpoints = {}
            for pid in partition_ids:
                mark = await own.get_checkpoint(pid)
                if mark is not None:
                    checkpoints[pid] = (mark.sequence_number, mark.offset)
            if not checkpoints:
                raise ConfigError(
                    f"--resume: consumer group {consumer_group!r} has no replay progress yet"
                )
        elif snapshot:
            checkpoints = {
                pid: (m.sequence_number, m.offset) for pid, m in read_snapshot(snapshot).items()
            }
        elif from_checkpoint:
            assert container is not None
            live = BlobPartitionStore(
                container,
                checkpoint_store(settings),
                fully_qualified_namespace=fqns,
                eventhub_name=hub,
                consumer_group=settings.consumer_group,
            )
            checkpoints = {}
            for pid in partition_ids:
                mark = await live.get_checkpoint(pid)
                if mark is not None:
                    checkpoints[pid] = (mark.sequence_number, mark.offset)
            await live.checkpoint_store.close()
        bounds = await resolve_bounds(
            probe, partition_ids, start=start, checkpoints=checkpoints, until=until
        )

    result = BackfillPlan()
    with contextlib.ExitStack() as files:
        tmp = Path(files.enter_context(tempfile.TemporaryDirectory()))
        dead_file = None
        if dead_letter_path:
            dead_file = files.enter_context(_open_text(dead_letter_path))
        runs: dict[str, _PartitionRun] = {}
        stores: list[Any] = []
        limits = Limits.create(settings.max_inflight)
        for b in bounds:
            plan_file = None
            if plan_path:
                plan_file = files.enter_context(_open_text(tmp / f"{b.partition_id}.jsonl"))

            async def dead_letter(name: str, record: dict[str, Any], pid: str = b.partition_id):
                if dead_file is not None:
                    dead_file.write(json_line(record))
                else:
                    log.warning("backfill_dead_letter", partition_id=pid, name=name)

            delivery = None
            if not plan_path:
                assert executors is not None and container is not None
                delivery = await _delivery(
                    settings, container, fqns, hub, consumer_group, b.partition_id,
                    ruleset, executors, limits, dead_letter, result, stores,
                )  # fmt: skip
            runs[b.partition_id] = _PartitionRun(
                b,
                ruleset,
                plan=plan_file,
                delivery=delivery,
                dead_letter=dead_letter,
                save=own.update_checkpoint if own is not None else None,
                interval_s=settings.checkpoint_interval,
            )
        try:
            await _receive_all(settings, consumer_group, bounds, runs, progress)
        finally:
            for store in stores:
                with contextlib.suppress(Exception):
                    await store.close()
            if own is not None:
                with contextlib.suppress(Exception):
                    await own.checkpoint_store.close()
            if container is not None:
                await container.close()
        for pid, run in runs.items():
            result.summary.merge(run.pipeline.summary)
            result.partitions[pid] = run.messages
        if plan_path:
            for run in runs.values():
                if run.plan is not None:
                    run.plan.flush()
            _concatenate(plan_path, [tmp / f"{b.partition_id}.jsonl" for b in bounds])
    return result


async def _delivery(
    settings: Settings,
    container: Any,
    fqns: str,
    hub: str,
    consumer_group: str,
    partition_id: str,
    ruleset: RuleSet,
    executors: Mapping[str, Executor],
    limits: Limits,
    dead_letter: Callable[..., Any],
    result: BackfillPlan,
    stores: list[Any],
) -> Delivery:
    ledger = None
    if ruleset.action_types & LEDGER_TYPES:
        from worker.connections import checkpoint_store

        own_sdk = checkpoint_store(settings)
        stores.append(own_sdk)
        own = BlobPartitionStore(
            container,
            own_sdk,
            fully_qualified_namespace=fqns,
            eventhub_name=hub,
            consumer_group=consumer_group,
        )
        live = BlobPartitionStore(
            container,
            own_sdk,
            fully_qualified_namespace=fqns,
            eventhub_name=hub,
            consumer_group=settings.consumer_group,
        )
        ledger = Ledger(own, partition_id, settings.ledger_retention)
        await ledger.load()
        live_ledger = Ledger(live, partition_id, settings.ledger_retention)
        await live_ledger.load()
        ledger.done.update(live_ledger.done)  # read access: never written

    return Delivery(
        partition_id,
        executors,
        limits,
        environ=os.environ,
        ledger=ledger,
        dead_letter=dead_letter,
        on_result=result.count,
    )


async def _receive_all(
    settings: Settings,
    consumer_group: str,
    bounds: list[Bounds],
    runs: Mapping[str, _PartitionRun],
    progress: Callable[[dict[str, tuple[int, int]]], None] | None,
) -> None:
    from worker.connections import consumer_client

    async def one(b: Bounds) -> None:
        run = runs[b.partition_id]
        if run.done.is_set():
            return
        client = consumer_client(settings, consumer_group=consumer_group)

        async def on_batch(context: Any, events: list[Any]) -> None:
            await run.handle(events)

        async with client:
            task = asyncio.ensure_future(
                client.receive_batch(
                    on_batch,
                    partition_id=b.partition_id,
                    starting_position=b.start,
                    starting_position_inclusive=b.inclusive,
                    max_batch_size=300,
                    max_wait_time=1.0,
                )
            )
            done = asyncio.ensure_future(run.done.wait())
            await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
            await client.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if not run.done.is_set():
                raise SourceError(f"partition {b.partition_id}: receiving stopped early")

    async def report() -> None:
        """Progress every 2 s; the replay group's checkpoints as often as they may move."""
        tick = min(2.0, max(0.1, settings.checkpoint_interval))
        last_report = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            for run in runs.values():
                if not run.done.is_set():
                    try:
                        await run.checkpoint()
                    except Exception as exc:  # storage hiccup: the next tick tries again
                        log.warning("replay_checkpoint_failed", error=str(exc))
            if time.monotonic() - last_report < 2:
                continue
            last_report = time.monotonic()
            state = {pid: (r.messages, r.bounds.total) for pid, r in runs.items()}
            if progress is not None:
                progress(state)
                continue
            for pid, run in runs.items():
                done, total = state[pid]
                elapsed = max(time.monotonic() - run.started, 1e-6)
                rate = done / elapsed
                eta = (total - done) / rate if rate and total > done else 0.0
                log.info(
                    "backfill_progress",
                    partition_id=pid,
                    done=done,
                    total=total,
                    rate_per_s=round(rate, 1),
                    eta_s=round(eta, 1),
                    finished=run.done.is_set(),
                )

    reporter = asyncio.ensure_future(report())
    try:
        await asyncio.gather(*(one(b) for b in bounds))
    finally:
        reporter.cancel()


def _open_text(path: str | Path) -> IO[str]:
    """Local plan and dead-letter files: small writes, fine on the event loop."""
    return open(path, "w", encoding="utf-8")  # the caller's ExitStack closes it


def _concatenate(path: str, parts: list[Path]) -> None:
    """Partition plans one after the other, in partition order: a deterministic plan."""
    target = open(path, "w", encoding="utf-8") if path != "-" else None  # noqa: SIM115
    try:
        out = target or sys.stdout
        for part in parts:
            if part.exists():
                with open(part, encoding="utf-8") as handle:
                    for line in handle:
                        out.write(line)
        out.flush()
    finally:
        if target is not None:
            target.close()


async def backfill_messages(
    settings: Settings,
    ruleset: RuleSet,
    messages: AsyncIterator[tuple[bytes, Origin]],
    *,
    plan_path: str | None,
    dead_letters: IO[str],
    executors: Mapping[str, Executor] | None = None,
    consumer_group: str | None = None,
) -> BackfillPlan:
    """Capture files or a JSON-lines file through one pipeline per partition. `plan_path` =
    dry run (plans in partition order); otherwise actions run with the live keys, with the
    hub's ledger when `consumer_group` names the replay group (None: no ledger, e.g. a file
    replay on a machine without the worker's storage)."""
    from worker.connections import blob_container, consumer_client

    result = BackfillPlan()
    runs: dict[str, _PartitionRun] = {}
    stores: list[Any] = []
    container = None
    fqns = hub = ""
    if plan_path is None and consumer_group is not None:
        probe = consumer_client(settings, consumer_group=consumer_group)
        fqns, hub = probe._address.hostname, probe.eventhub_name  # as the SDK names blobs
        await probe.close()
        container = blob_container(settings)
    limits = Limits.create(settings.max_inflight)

    async def dead_letter(name: str, record: dict[str, Any]) -> None:
        dead_letters.write(json_line(record))

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as files:
        try:
            async for body, origin in messages:
                pid = origin.partition_id
                if pid not in runs:
                    plan_file = delivery = None
                    if plan_path is not None:
                        plan_file = files.enter_context(_open_text(Path(tmp) / f"{pid}.jsonl"))
                    elif consumer_group is not None:
                        assert executors is not None
                        delivery = await _delivery(
                            settings, container, fqns, hub, consumer_group, pid,
                            ruleset, executors, limits, dead_letter, result, stores,
                        )  # fmt: skip
                    else:
                        assert executors is not None
                        delivery = Delivery(
                            pid, executors, limits, environ=os.environ, ledger=None,
                            dead_letter=dead_letter, on_result=result.count,
                        )  # fmt: skip
                    runs[pid] = _PartitionRun(
                        Bounds(pid, None, False, -1),
                        ruleset,
                        plan=plan_file,
                        delivery=delivery,
                        dead_letter=dead_letter,
                    )
                await runs[pid].feed(body, origin)
            for run in runs.values():
                await run.finish()
        finally:
            for store in stores:
                with contextlib.suppress(Exception):
                    await store.close()
            if container is not None:
                await container.close()
        for pid, run in runs.items():
            result.summary.merge(run.pipeline.summary)
            result.partitions[pid] = run.messages
            if run.plan is not None:
                run.plan.flush()
        if plan_path is not None:
            order = sorted(runs, key=lambda p: (len(p), p))
            _concatenate(plan_path, [Path(tmp) / f"{pid}.jsonl" for pid in order])
    return result
