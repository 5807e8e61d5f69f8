"""`run`: the long-running consumer (DESIGN §1, §5) on the official async SDK.

`EventHubConsumerClient` with the blob checkpoint store does the receiving and the load
balancing between replicas; each partition it hands us gets a `PartitionWorker` that runs
the pure pipeline, dispatches actions, and writes state then checkpoint at most once per
interval. Ownership hand-over between live replicas is made exact by a small protocol on
the state blob: the old owner's final save is marked `released`, and a new owner waits
(bounded) for that mark before loading state, so events the old owner finished are known
as duplicates instead of being dispatched again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from worker import tracing
from worker.actions import Executor, missing_executors
from worker.checkpoints import BlobPartitionStore, StateFenced, StateHandle
from worker.delivery import LEDGER_TYPES, Delivery, Ledger, Limits
from worker.errors import (
    CheckpointError,
    ConfigError,
    UnreachableError,
    WorkerError,
    exception_summary,
)
from worker.events import Origin, restore_event
from worker.health import HealthServer, Metrics
from worker.jsontext import dumps
from worker.ordering import Sequencer
from worker.pipeline import Decision, PartitionPipeline, Step, Summary, ordering_config
from worker.plan import PlannedAction, Throttler, plan_rule
from worker.positions import PositionKind, StartPositions
from worker.replay import MAX_LOGGED_REJECTIONS, dead_letter_for_rejection
from worker.rules import RuleSet
from worker.settings import Settings
from worker.state import Mark, Progress

__all__ = ["Consumer", "RunStats"]

log = structlog.get_logger(__name__)

MAX_JOBS_PER_PARTITION = 1000


@dataclass(slots=True)
class RunStats:
    """What a run did, for the closing summary and `--stop-when-idle` output."""

    summary: Summary = field(default_factory=Summary)
    actions: int = 0
    skipped: int = 0
    action_failures: int = 0
    dead_letters: int = 0
    dead_letter_write_failures: int = 0
    checkpoints: int = 0
    state_saves: int = 0
    partitions: set[str] = field(default_factory=set)
    unsaved_partitions: set[str] = field(default_factory=set)  # see PartitionWorker._unwritten
    # Partitions whose final checkpoint (a `--stop-when-idle` flush) stayed before the last
    # message received: partition -> (checkpointed sequence number, last received).
    behind: dict[str, tuple[int | None, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary.as_dict(),
            "actions_dispatched": self.actions,
            "actions_skipped_by_ledger": self.skipped,
            "action_failures": self.action_failures,
            "dead_letters": self.dead_letters,
            "dead_letter_write_failures": self.dead_letter_write_failures,
            "checkpoints_written": self.checkpoints,
            "state_saves": self.state_saves,
            "partitions": sorted(self.partitions, key=lambda p: (len(p), p)),
        }


class PartitionWorker:
    """One owned partition: pipeline + progress + periodic state/checkpoint saves."""

    def __init__(self, consumer: Consumer, partition_id: str) -> None:
        self.consumer = consumer
        self.partition_id = partition_id
        self.store = consumer.store
        self.interval_s = consumer.settings.checkpoint_interval
        self.pipeline: PartitionPipeline | None = None
        self.progress = Progress()
        self.handle: StateHandle | None = None
        self.committed: Mark | None = None
        self.last_save = time.monotonic()
        self.dirty = False
        self.fenced = False
        self.busy: asyncio.Task[None] | None = None
        self.delivery: Delivery | None = None
        self.inflight: dict[int, tuple[Any, list[str]]] = {}  # job -> (event, rule names)
        self._next_job = 0
        self.lock = asyncio.Lock()
        self.log = log.bind(partition_id=partition_id)
        # Each ownership of a partition has its own id, so a re-claim by the same process
        # still waits for the previous worker's `released` mark.
        self.owner = f"{consumer.owner_id}/{uuid.uuid4().hex[:8]}"
        self.force_snapshot = False
        self.last_nonce = ""
        self.last_event_at = time.monotonic()
        self.checkpoint_moved_at = time.monotonic()
        self.lag = 0
        self.received = -1  # highest sequence number the hub delivered to us
        self.unread = 0  # events enqueued past `received` (from the lag watcher)
        self.reconnected_at = 0.0
        self.closed = asyncio.Event()  # set once close() has saved (or given up)
        self.closing = asyncio.Event()  # close() began: dead-letter writes stop retrying
        # A dead letter could not be written while closing: the events it belongs to were
        # already taken out of the reorder buffer, so saving this state would lose them.
        # The last saved state and checkpoint stay; the next owner reads again from there.
        self.unsaveable = False
        # Tracing on: what the spans of each received message's events need (worker.tracing).
        self.traces = tracing.message_traces(
            partition_id,
            eventhub=getattr(consumer.client, "eventhub_name", None),
            consumer_group=consumer.settings.consumer_group,
        )

    # --- life cycle ---------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start, retrying while storage is unreachable: events must not flow before state."""
        delay = 0.5
        while self.pipeline is None:
            try:
                await self.start()
            except Exception as exc:  # storage or hub unreachable: keep trying, never skip
                self.log.warning("partition_start_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def start(self) -> None:
        """Load state and get ready; all or nothing (a failed start leaves no half state)."""
        for _ in range(10):
            try:
                await self._start()
                return
            except StateFenced:
                # The previous owner wrote after we loaded (a hand-over that timed out):
                # start again from its newer state.
                self.log.info("state_changed_during_start")
            except BaseException:
                self.pipeline = self.handle = self.delivery = None
                raise
            self.pipeline = self.handle = self.delivery = None
        raise CheckpointError(f"partition {self.partition_id}: state keeps changing under us")

    async def _start(self) -> None:
        handle = await self._await_handover()
        ruleset = self.consumer.ruleset
        records = handle.records
        start = max((i for i, r in enumerate(records) if r.get("kind") == "snapshot"), default=0)
        config = ordering_config(ruleset)
        try:
            sequencer = Sequencer.restore(config, [r["sequencer"] for r in records[start:]])
            throttler = Throttler.restore(records[-1].get("throttle", []) if records else [])
        except (KeyError, TypeError, OverflowError) as exc:
            self.log.warning(
                "state_discarded", reason=f"unreadable state ({exception_summary(exc, 300)})"
            )
            sequencer, throttler = Sequencer(config), Throttler()
        # A ValueError (state written by a newer worker) propagates: never overwrite it.
        sequencer.resume(datetime.now(UTC))  # restored held events wait `grace` from now
        ledger = None
        if ruleset.action_types & LEDGER_TYPES:
            ledger = Ledger(self.store, self.partition_id, self.consumer.settings.ledger_retention)
            await ledger.load()
        committed = await self.store.get_checkpoint(self.partition_id)
        if committed is None:
            committed = await self._initial_checkpoint()
        progress = Progress(committed)
        floor = committed.sequence_number if committed else -1
        for event in sequencer.held_events():
            seq = event.origin.sequence_number
            if seq is not None and seq > floor:
                progress.hold(seq)
        # Everything is loaded: from here on nothing can fail half-way.
        self.pipeline = PartitionPipeline(ruleset, sequencer=sequencer, throttler=throttler)
        self.handle = handle
        self.committed = committed
        self.progress = progress
        self.delivery = Delivery(
            self.partition_id,
            self.consumer.executors,
            self.consumer.limits,
            environ=self.consumer.environ,
            ledger=ledger,
            dead_letter=self._dead_letter,
            on_result=self.consumer.count_result,
            metrics=self.consumer.metrics,
        )
        # Events whose actions were in flight when the previous owner saved: run them again
        # (same idempotency keys; the ledger and the targets keep them from repeating). They
        # are registered before the start snapshot so that it lists them as pending: the
        # sequencer already knows them, so a state without them would lose them for good if
        # this owner died before they finished.
        pending = records[-1].get("pending", []) if records else []
        restored = []
        unrestorable = []
        for item in pending:
            try:
                event = restore_event(item["raw"], Origin.from_dict(item["origin"]), item["ticks"])
                if item.get("late"):
                    event = dataclasses.replace(event, late=True)
                rules = [r for r in ruleset.rules if r.name in set(item["rules"])]
                actions = [
                    p for r in rules for p in plan_rule(r, event) if isinstance(p, PlannedAction)
                ]
            except Exception as exc:  # one saved event must not keep the partition from starting
                unrestorable.append(_pending_failure(item, exc, self.partition_id))
                continue
            seq = event.origin.sequence_number
            if seq is not None and seq > floor:
                progress.hold(seq)
            restored.append((event, [r.name for r in rules], actions))
        if unrestorable:
            self.log.error("pending_events_not_restored", count=len(unrestorable))
            await self._dead_letters(
                f"{committed.sequence_number if committed else 'start'}-restore-"
                + _digest(dumps([r.get("source") for r in unrestorable])),
                unrestorable,
            )
        self.inflight = {}
        tokens = [self._register(event, names) for event, names, _ in restored]
        # A snapshot claims the state blob for this owner (fencing the old one) before any
        # action runs; StateFenced here restarts the start.
        await self.save(force=True, snapshot=True, during_start=True)
        for token, (event, _, actions) in zip(tokens, restored, strict=True):
            self._start_job(token, event, actions)
        self.log.info(
            "partition_started",
            checkpoint=committed.sequence_number if committed else None,
            restored_ids=sequencer.remembered_ids,
            restored_held=sequencer.held,
            restored_pending=len(pending),
        )

    async def _await_handover(self) -> StateHandle:
        """Wait (bounded) for a live previous owner to mark its final state `released`.

        A live owner notices the loss within one load-balancing interval and then drains for
        up to the shutdown timeout: the wait covers both, or both owners would run the same
        pending actions. A state with nothing pending, saved longer ago than the ownership
        expiry minus one load-balancing interval, belongs to an owner that is dead (the SDK
        only takes over an expired ownership) or idle (anything new would have been saved
        within the checkpoint interval): there is nothing to wait for. With actions pending
        the old owner may still be draining them, so the new one waits.
        """
        settings = self.consumer.settings
        handle = await self.store.load_state(self.partition_id)
        last = handle.last
        if last is None or last.get("released"):
            return handle
        quiet_after = max(
            settings.ownership_expiry - settings.load_balancing_interval,
            settings.checkpoint_interval,
        )
        if not last.get("pending") and _age_s(last.get("saved_at")) >= quiet_after:
            self.log.info("handover_previous_owner_gone", previous_owner=last.get("owner"))
            return handle
        deadline = time.monotonic() + (
            settings.load_balancing_interval + settings.shutdown_timeout + 5
        )
        while True:
            last = handle.last
            if last is None or last.get("released"):
                return handle
            if time.monotonic() >= deadline:
                self.log.warning("handover_timeout", previous_owner=last.get("owner"))
                return handle
            await asyncio.sleep(0.2)
            handle = await self.store.load_state(self.partition_id)

    async def _initial_checkpoint(self) -> Mark | None:
        """With no checkpoint yet, write one at the start position (never past an event)."""
        position = self.consumer.start_positions.for_partition(self.partition_id)
        props = await self.consumer.client.get_partition_properties(self.partition_id)
        if position.kind is PositionKind.EARLIEST:
            mark = Mark(int(props["beginning_sequence_number"]) - 1, "-1")
            if props.get("is_empty"):
                mark = Mark(int(props["last_enqueued_sequence_number"]), "-1")
        elif position.kind is PositionKind.LATEST:
            mark = self.consumer.latest.get(self.partition_id) or Mark(
                int(props["last_enqueued_sequence_number"]), str(props["last_enqueued_offset"])
            )
            if props.get("is_empty") or mark.sequence_number < 0:
                mark = Mark(int(props["last_enqueued_sequence_number"]), "-1")
        else:
            # seq:/offset:/time: positions: the offset just before them is not known without
            # reading; the first periodic save writes the checkpoint instead.
            self.log.warning("no_checkpoint_start", position=str(position))
            return None
        self.log.warning(
            "no_checkpoint_start",
            position=str(position),
            message=f"partition {self.partition_id} has no checkpoint: starting at {position}",
        )
        await self.store.update_checkpoint(self.partition_id, mark)
        self.consumer.stats.checkpoints += 1
        return mark

    async def close(self, *, release: bool, flush: bool) -> None:
        """Stop cleanly: finish the batch in hand, optionally release held events, save."""
        try:
            await self._close(release=release, flush=flush)
        finally:
            self.closed.set()

    async def _close(self, *, release: bool, flush: bool) -> None:
        self.closing.set()
        deadline = time.monotonic() + self.consumer.settings.shutdown_timeout
        if self.busy is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.busy), _left(deadline))
        async with self.lock:
            if flush and self.pipeline is not None:
                try:
                    await self._dispatch_step(self.pipeline.finish())
                except DeadLetterUnwritten:
                    self._unwritten()
            if self.delivery is not None and not await self.delivery.drain(_left(deadline)):
                self.log.warning("shutdown_cancelled_actions", left=self.delivery.in_flight)
                await self.delivery.cancel()  # still `pending` in the saved state
            await self.save(force=True, released=release)
        if flush and self.received >= 0:
            done = self.committed.sequence_number if self.committed else None
            if done is None or done < self.received:
                self.consumer.stats.behind[self.partition_id] = (done, self.received)
            else:
                self.consumer.stats.behind.pop(self.partition_id, None)
        if self.pipeline is not None:
            self.consumer.stats.summary.merge(self.pipeline.summary)
        self.log.info("partition_closed", released=release, held=self.held)

    @property
    def held(self) -> int:
        return self.pipeline.sequencer.held if self.pipeline else 0

    # --- processing ---------------------------------------------------------------------

    async def process(self, events: list[Any]) -> None:
        """One batch from the SDK (empty when the partition was quiet for max_wait_time).

        No message can stop the partition (DESIGN §7): whatever fails while handling one is
        dead-lettered with its coordinates and the partition moves on. Only storage can
        stop a batch (`DeadLetterUnwritten`): the rest of it is then left unread, for this
        owner's next batch or the next owner, and the checkpoint stays before it.
        """
        async with self.lock:
            assert self.pipeline is not None
            now = datetime.now(UTC)
            floor = self.committed.sequence_number if self.committed else -1
            try:
                for event_data in events:
                    self.consumer.note_event()
                    self.last_event_at = time.monotonic()
                    self.received = max(self.received, int(event_data.sequence_number))
                    if event_data.sequence_number <= floor:
                        # Finished by definition: the SDK re-reads a checkpointed event when
                        # the start position is inclusive, and hand-overs re-read up to it.
                        continue
                    await self._process_one(event_data, now)
                    self.dirty = True
                try:
                    tick = self.pipeline.tick(now)
                except Exception as exc:  # the held events stay held: tried again next batch
                    self.log.error("release_failed", error=exception_summary(exc, 300))
                    tick = Step()
                with contextlib.suppress(Exception):
                    self.consumer.metrics.step(self.partition_id, tick)
                if tick.decisions:
                    await self._dispatch_step(tick)
                    self.dirty = True
            except DeadLetterUnwritten:
                self._unwritten()
            await self.save()
            self.consumer.metrics.held.labels(self.partition_id).set(self.held)

    async def _process_one(self, event_data: Any, now: datetime) -> None:
        seq = int(event_data.sequence_number)
        mark = Mark(seq, str(event_data.offset))
        try:
            origin, body = origin_of(event_data, self.partition_id)
            step = self.pipeline.feed(body, origin, now)  # type: ignore[union-attr]
        except Exception as exc:  # a message the pipeline cannot handle at all
            self.progress.received(mark, 1)  # held until its dead letter is written
            await self._dead_letters(
                f"{seq}-message", [_message_failure(event_data, self.partition_id, exc)]
            )
            self.progress.finished(seq)
            return
        if self.traces is not None:
            with contextlib.suppress(Exception):  # tracing must never cost an event
                self.traces.received(event_data.properties, seq, step.decoded)
        with contextlib.suppress(Exception):  # nor must metrics
            self.consumer.metrics.step(self.partition_id, step, messages=1)
        # The message's own dead letters (its invalid elements) count as one more unfinished
        # part of it: the checkpoint cannot pass it before they are written.
        self.progress.received(mark, step.decoded + (1 if step.rejections else 0))
        await self._dispatch_step(step, rejected_at=seq)

    async def _dispatch_step(self, step: Step, *, rejected_at: int | None = None) -> None:
        """Dead-letter what the step rejected or could not render, in one write per step,
        then hand the decisions' actions to delivery."""
        records: list[tuple[str, Mapping[str, Any]]] = []
        for index, rejection in enumerate(step.rejections):
            name = f"{rejected_at if rejected_at is not None else 'released'}-element"
            try:
                if index < MAX_LOGGED_REJECTIONS:
                    self.log.warning("invalid_body", where=rejection.describe())
                element = "body" if rejection.index is None else str(rejection.index)
                name = f"{rejection.origin.sequence_number}-{element}"
                record: Mapping[str, Any] = dead_letter_for_rejection(rejection)
            except Exception as exc:  # the record itself failed: keep what can be kept
                record = _fallback_record("invalid_body", rejection, exc, self.partition_id)
            records.append((name, record))
        if len(step.rejections) > MAX_LOGGED_REJECTIONS:
            self.log.warning(
                "invalid_bodies_not_logged",
                count=len(step.rejections) - MAX_LOGGED_REJECTIONS,
                sequence_number=rejected_at,
                message="more invalid elements in this message: see the dead letters",
            )
        for decision in step.decisions:
            for failure in decision.failures:
                seq = decision.event.origin.sequence_number
                try:
                    self.log.warning(
                        "render_error",
                        rule=failure.rule,
                        event_id=decision.event.id,
                        error=failure.error,
                    )
                    records.append((f"{seq}-{failure.key}", failure.dead_letter()))
                except Exception as exc:
                    records.append(
                        (
                            f"{seq}-render-error",
                            _fallback_record("render_error", failure, exc, self.partition_id),
                        )
                    )
        if records:
            # One blob for all of them: the cost of a message's dead letters is one write
            # whatever its size (DESIGN §7), and its name is deterministic, so a message
            # processed again after a crash overwrites its dead letters instead of
            # duplicating them.
            name = records[0][0] if len(records) == 1 else _batch_name(records)
            await self._dead_letters(name, [record for _, record in records])
        if rejected_at is not None and step.rejections:
            self.progress.finished(rejected_at)
        assert self.delivery is not None
        for decision in step.decisions:
            try:
                self._dispatch(decision)
            except Exception as exc:  # never leave an event unfinished: dead-letter it
                self.log.warning(
                    "dispatch_failed", event_id=decision.event.id, error=exception_summary(exc, 300)
                )
                await self._dead_letters(
                    f"{decision.event.sequence_number}-dispatch-"
                    + _digest(f"{decision.event.topic}\n{decision.event.id}"),
                    [_event_failure(decision, exc, self.partition_id)],
                )
                seq = decision.event.origin.sequence_number
                if seq is not None:
                    self.progress.finished(seq)
                continue
            await self.delivery.wait_below(MAX_JOBS_PER_PARTITION)  # backpressure, never drop

    def _dispatch(self, decision: Decision) -> None:
        """Hand one decision's actions to delivery. Whatever raises here happened before
        the hand-over (the event is then still ours to finish: the caller dead-letters it);
        once `delivery.submit` returned, the job finishes the event."""
        event = decision.event
        with contextlib.suppress(Exception):  # bookkeeping for a warning: never costs an event
            self.consumer.watch_object(decision, self.partition_id)
        rules = list(dict.fromkeys(a.rule for a in decision.actions))
        span = None
        if self.traces is not None:
            with contextlib.suppress(Exception):
                span = self.traces.start_event(decision)
        self._submit(event, rules, list(decision.actions), span)

    def _submit(
        self, event: Any, rules: list[str], actions: list[PlannedAction], span: Any = None
    ) -> None:
        if not actions:
            seq = event.origin.sequence_number
            if seq is not None:
                self.progress.finished(seq)
            if span is not None:
                tracing.end_event(span, [])
            return
        self._start_job(self._register(event, rules), event, actions, span)

    def _register(self, event: Any, rules: list[str]) -> int:
        """An event with actions to run: pending in every save until its job ends."""
        token = self._next_job
        self._next_job += 1
        self.inflight[token] = (event, rules)
        return token

    def _start_job(
        self, token: int, event: Any, actions: list[PlannedAction], span: Any = None
    ) -> None:
        assert self.delivery is not None
        seq = event.origin.sequence_number
        if not actions:  # restored with rules that no longer plan anything
            self.inflight.pop(token, None)
            if seq is not None:
                self.progress.finished(seq)
            return

        def done() -> None:
            self.inflight.pop(token, None)
            if seq is not None:
                self.progress.finished(seq)
            self.dirty = True

        try:
            self.delivery.submit(event.object_key, actions, done, span=span)
        except BaseException:
            self.inflight.pop(token, None)  # not handed over: not pending either
            raise

    def _unwritten(self) -> None:
        self.unsaveable = True
        self.consumer.stats.unsaved_partitions.add(self.partition_id)
        self.log.error(
            "state_not_saved",
            reason="a dead letter could not be written before the partition closed",
            message="the last saved checkpoint and state stay; the next owner reads the "
            "messages after it again",
        )

    async def _dead_letter(self, name: str, record: Mapping[str, Any]) -> None:
        """A failed action's dead letter (delivery calls this, outside the lock)."""
        await self._dead_letters(name, [record])

    async def _dead_letters(self, name: str, records: list[Mapping[str, Any]]) -> None:
        """Dead letters must not be lost (DESIGN §7): one blob write for all of them,
        retried with backoff until it lands. The caller keeps what they belong to
        unfinished meanwhile, so the checkpoint cannot pass a dead letter not written.
        A closing partition stops retrying (`DeadLetterUnwritten`): the message stays
        before the checkpoint and its next owner reads it again."""
        at = time.time()
        records = [{"dead_lettered_at": at, **record} for record in records]
        delay = 0.5
        while True:
            try:
                await self.store.dead_letters(self.partition_id, name, records)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage, or anything else: count it, never drop it
                self.consumer.stats.dead_letter_write_failures += 1
                self.consumer.metrics.dead_letter_write_failures.inc()
                wait = random.uniform(delay / 2, delay)
                self.log.warning(
                    "dead_letter_write_failed",
                    dead_letter=name,
                    records=len(records),
                    error=exception_summary(exc, 300),
                    retry_in_s=round(wait, 2),
                    message="the checkpoint stays before this message until it is written",
                )
                if self.closing.is_set():
                    raise DeadLetterUnwritten(name) from None
                # Backs off (capped, jittered), and stops waiting as soon as close() begins.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), wait)
                delay = min(delay * 2, 30)
        self.consumer.stats.dead_letters += len(records)
        for record in records:
            self.consumer.metrics.dead_letters.labels(str(record.get("kind", "unknown"))).inc()

    # --- saving -------------------------------------------------------------------------

    async def save(
        self,
        *,
        force: bool = False,
        snapshot: bool = False,
        released: bool = False,
        during_start: bool = False,
    ) -> None:
        """State, then checkpoint: at most once per interval unless forced (DESIGN §5)."""
        if self.fenced or self.unsaveable or self.pipeline is None or self.handle is None:
            return
        now = time.monotonic()
        mark = self.progress.checkpoint()
        moved = mark is not None and mark != self.committed
        if not force and (now - self.last_save < self.interval_s or not (self.dirty or moved)):
            return
        # After a failed save the changes it carried are gone from the delta tracking:
        # only a snapshot is complete then.
        snapshot = snapshot or self.force_snapshot or self.store.needs_snapshot(self.handle)
        sequencer = self.pipeline.sequencer
        nonce = uuid.uuid4().hex
        record = {
            "kind": "snapshot" if snapshot else "delta",
            "owner": self.owner,
            "nonce": nonce,
            "released": released,
            "saved_at": datetime.now(UTC).isoformat(),
            "checkpoint": [mark.sequence_number, mark.offset] if mark else None,
            "sequencer": sequencer.snapshot() if snapshot else sequencer.delta(),
            "throttle": self.pipeline.throttler.snapshot(),
            "pending": [
                {
                    "raw": event.raw,
                    "ticks": event.time_ticks,
                    "origin": event.origin.as_dict(),
                    "late": event.late,
                    "rules": rules,
                }
                for event, rules in self.inflight.values()
            ],
        }
        try:
            try:
                await self.store.save_state(self.handle, record, snapshot=snapshot)
            except StateFenced:
                if during_start or not await self._landed(nonce):
                    raise
            self.force_snapshot = False
            self.consumer.stats.state_saves += 1
            if moved and mark is not None:
                await self.store.update_checkpoint(self.partition_id, mark)
                self.committed = mark
                self.consumer.stats.checkpoints += 1
                self.consumer.metrics.checkpoints.labels(self.partition_id).inc()
                self.checkpoint_moved_at = time.monotonic()
            self.consumer.storage_error = None
        except StateFenced:
            if during_start:
                raise
            self.fenced = True
            self.log.warning("state_fenced", message="another owner took this partition")
            return
        except CheckpointError as exc:
            self.force_snapshot = True
            self.consumer.storage_error = str(exc)
            self.log.warning("save_failed", error=str(exc))  # retried next interval
            return
        self.last_save = now
        self.dirty = False

    async def _landed(self, nonce: str) -> bool:
        """After a conflict: did our own commit land after all (a retried request)?"""
        assert self.handle is not None
        fresh = await self.store.load_state(self.partition_id)
        last = fresh.last
        if last is not None and last.get("nonce") == nonce:
            self.handle.etag, self.handle.blocks = fresh.etag, fresh.blocks
            self.handle.records = fresh.records
            return True
        return False


class DeadLetterUnwritten(Exception):
    """A dead letter could not be written before the partition closed."""


def _digest(text: str) -> str:
    """A short, stable hex digest of any string (lone surrogates included)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _batch_name(records: list[tuple[str, Mapping[str, Any]]]) -> str:
    """A batch blob's name: its first record's, plus a digest of all the records' names,
    so the same message processed again writes the same blob."""
    return f"{records[0][0]}-batch-{_digest(chr(10).join(name for name, _ in records))}"


def _fallback_record(kind: str, item: Any, exc: Exception, partition_id: str) -> dict[str, Any]:
    """A dead letter for an item whose own record could not be built: what can be read
    safely (its coordinates), and why."""
    origin = getattr(item, "origin", None) or getattr(getattr(item, "event", None), "origin", None)
    try:
        source = origin.as_dict() if origin is not None else {"partition_id": partition_id}
    except Exception:
        source = {"partition_id": partition_id}
    return {
        "kind": kind,
        "reason": f"the dead-letter record could not be built ({exception_summary(exc, 300)})",
        "source": source,
    }


def _message_failure(event_data: Any, partition_id: str, exc: Exception) -> dict[str, Any]:
    """A message the pipeline raised on: its coordinates and bytes, for a dead letter."""
    record: dict[str, Any] = {
        "kind": "invalid_body",
        "reason": f"the message could not be processed ({exception_summary(exc, 300)})",
        "source": {
            "partition_id": partition_id,
            "offset": str(event_data.offset),
            "sequence_number": event_data.sequence_number,
            "enqueued_time": str(getattr(event_data, "enqueued_time", None)),
            "line": None,
        },
        "index": None,
    }
    try:
        body = b"".join(event_data.body)
        record["body_base64"] = base64.b64encode(body).decode("ascii")
    except Exception:  # the body itself is what failed: the coordinates must do
        record["body_base64"] = None
    return record


def _pending_failure(item: Any, exc: Exception, partition_id: str) -> dict[str, Any]:
    """A saved in-flight event that cannot be restored: dead-lettered as it was saved."""
    record: dict[str, Any] = {
        "kind": "processing_error",
        "reason": f"a saved in-flight event could not be restored ({exception_summary(exc, 300)})",
        "source": {"partition_id": partition_id},
        "pending": item,
    }
    with contextlib.suppress(Exception):
        record["source"] = dict(item["origin"])
        record["event_id"] = item["raw"]["id"]
        record["event"] = item["raw"]
    return record


def _event_failure(decision: Decision, exc: Exception, partition_id: str) -> dict[str, Any]:
    event = decision.event
    record: dict[str, Any] = {
        "kind": "processing_error",
        "reason": f"the event could not be dispatched ({exception_summary(exc, 300)})",
    }
    try:
        record.update(
            event_id=event.id,
            event_type=event.type,
            subject=event.subject,
            source=event.origin.as_dict(),
            event=event.as_received(),
        )
    except Exception:  # the event itself is what failed: its coordinates must do
        record.setdefault("source", {"partition_id": partition_id})
    return record


def _hub_unreachable(namespace: str, client: Any, exc: Exception) -> UnreachableError:
    return UnreachableError(
        "the event hub",
        f"{namespace} (hub {getattr(client, 'eventhub_name', '?')})",
        exc,
        "Check AML_WORKER_EVENTHUB_CONNECTION_STRING (or _NAMESPACE and _NAME), that the "
        "namespace and hub exist, and that this network reaches it on port 5671 (AMQP) or "
        "443 with AML_WORKER_EVENTHUB_TRANSPORT=websocket.",
    )


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _age_s(saved_at: Any) -> float:
    """Seconds since an ISO `saved_at` (0 when missing or unreadable: assume recent)."""
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(saved_at)).total_seconds()
    except (TypeError, ValueError):
        return 0.0


def origin_of(event_data: Any, partition_id: str) -> tuple[Origin, bytes]:
    """An SDK EventData as (Origin, body bytes): the one place that reads SDK events."""
    properties = event_data.properties or {}
    count = properties.get(b"aeg-delivery-count", properties.get("aeg-delivery-count"))
    if isinstance(count, bytes):
        count = count.decode("utf-8", "replace")
    try:
        delivery_count = int(count) if count is not None else None
    except (TypeError, ValueError):
        delivery_count = None
    enqueued = event_data.enqueued_time
    if enqueued is not None and enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    origin = Origin(
        partition_id=partition_id,
        offset=str(event_data.offset) if event_data.offset is not None else None,
        sequence_number=event_data.sequence_number,
        enqueued_time=enqueued,
        delivery_count=delivery_count,
    )
    try:
        body = b"".join(event_data.body)
    except TypeError:
        body = event_data.body_as_str().encode("utf-8")
    return origin, body


class Consumer:
    """The worker process: SDK client + partition workers + shutdown + idle stop."""

    def __init__(
        self,
        settings: Settings,
        ruleset: RuleSet,
        executors: Mapping[str, Executor],
        *,
        environ: Mapping[str, str],
        start_positions: StartPositions,
        stop_when_idle: float | None = None,
    ) -> None:
        missing = missing_executors(ruleset.action_types, executors)
        if missing:
            raise ConfigError(
                f"the rules use action type(s) {', '.join(missing)} that this worker cannot run "
                "yet; refusing to start rather than silently doing nothing"
            )
        self.settings = settings
        self.ruleset = ruleset
        self.executors = executors
        self.environ = environ
        self.start_positions = start_positions
        self.stop_when_idle = stop_when_idle
        self.owner_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = RunStats()
        self.limits = Limits.create(settings.max_inflight)
        self.metrics = Metrics()
        self.storage_error: str | None = None
        self.hub_error: tuple[float, str] | None = None  # (failing since, last error)
        self.started_at = time.monotonic()
        self.latest: dict[str, Mark] = {}  # `latest` start positions pinned at start-up
        self.workers: dict[str, PartitionWorker] = {}
        self._closing: dict[str, PartitionWorker] = {}  # closes still running
        self.client: Any = None
        self.store: BlobPartitionStore = None  # type: ignore[assignment]
        self._stop = asyncio.Event()
        self._last_event = time.monotonic()
        self._objects: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._failures: dict[str, int] = {}  # partition -> receive errors since it last worked
        self.split_objects = 0

    # --- shared bookkeeping --------------------------------------------------------------

    def note_event(self) -> None:
        self._last_event = time.monotonic()

    def watch_object(self, decision: Decision, partition_id: str) -> None:
        """Warn when one object shows up on two partitions: order cannot hold then (§4)."""
        key = decision.event.object_key
        seen = self._objects.get(key)
        if seen is None:
            self._objects[key] = partition_id
            if len(self._objects) > 100_000:
                self._objects.popitem(last=False)
        elif seen != partition_id:
            self.split_objects += 1
            self.metrics.split_objects.inc()
            self._objects[key] = partition_id
            log.warning(
                "object_on_several_partitions",
                subject=decision.event.subject,
                partitions=[seen, partition_id],
                hint="set the Event Grid subscription's PartitionKey delivery property to the "
                "subject so each object's events share a partition",
            )

    def stop(self) -> None:
        self._stop.set()

    def readiness_problems(self) -> list[str]:
        """Why /readyz says no (empty: ready)."""
        problems = []
        if self.storage_error:
            problems.append(f"checkpoint storage: {self.storage_error}")
        if self.hub_error and time.monotonic() - self.hub_error[0] > 10:
            problems.append(f"event hub unreachable: {self.hub_error[1]}")
        grace = 2 * self.settings.load_balancing_interval + 5
        if not self.workers and time.monotonic() - self.started_at > grace:
            problems.append("no partition owned")
        for pid in self.stalled_partitions():
            worker = self.workers[pid]
            problems.append(
                f"partition {pid} stalled: {worker.unread} unread events, nothing delivered "
                f"for {time.monotonic() - worker.last_event_at:.0f} s"
            )
        return problems

    def stalled_partitions(self) -> list[str]:
        """Owned partitions the hub has events for that delivered nothing for the stall
        timeout: the SDK's receiver can stay attached yet silent (or retry a dead connection
        without reporting it), so only a comparison with the hub's own figures shows it."""
        now = time.monotonic()
        timeout = self.settings.stall_timeout
        return [
            pid
            for pid, worker in self.workers.items()
            if worker.pipeline is not None
            and worker.unread > 0
            and now - worker.last_event_at > timeout
        ]

    def _receive_tasks(self) -> dict[str, asyncio.Task[Any]] | None:
        """The SDK's receive task per partition, or None without an SDK processor. Private
        to the SDK, which has no public handle for one partition's receiver."""
        processors = list(getattr(self.client, "_event_processors", {}).values())
        if not processors:
            return None
        tasks: dict[str, asyncio.Task[Any]] = {}
        for processor in processors:
            tasks.update(getattr(processor, "_tasks", {}))
        return tasks

    def orphaned_partitions(self) -> list[str]:
        """Started partitions the SDK no longer receives (no live receive task)."""
        tasks = self._receive_tasks()
        if tasks is None:
            return []
        return [
            pid
            for pid, w in self.workers.items()
            if w.pipeline is not None and (pid not in tasks or tasks[pid].done())
        ]

    def reconnect(self, partition_id: str) -> bool:
        """Drop a stalled partition's receiver so the SDK claims it again on a new link.

        The SDK has no public call for this; cancelling its receive task runs the normal
        close path (our `_on_close` saves and releases the state, ownership is released) and
        the next load-balancing round claims the partition again from the checkpoint.
        """
        task = (self._receive_tasks() or {}).get(partition_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def _watch_rules(self) -> None:
        """Reload the rules file when it changes (a ConfigMap update swaps a symlink): the
        new file is validated first and switched in between two events; an invalid one is
        logged and the old rules stay in force. Ordering and dedupe settings apply to
        partitions started after the switch."""
        from pathlib import Path

        from worker.errors import RulesError
        from worker.rules import load_rules, split_job_roots

        if not self.ruleset.path:
            return
        path = Path(self.ruleset.path)

        def fingerprint() -> tuple[Any, ...]:
            try:
                real = path.resolve()
                stat = real.stat()
                return (str(real), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except OSError:
                return ()

        seen = fingerprint()
        if not seen:
            return
        while True:
            await asyncio.sleep(2)
            current = fingerprint()
            if not current or current == seen:
                continue
            seen = current
            try:  # off the event loop: a large file must not pause the partitions
                ruleset = await asyncio.to_thread(
                    partial(
                        load_rules,
                        path,
                        environ=self.environ,
                        job_roots=split_job_roots(self.settings.job_roots)
                        if self.settings.job_roots is not None
                        else None,
                    )
                )
            except RulesError as exc:
                log.error(
                    "rules_reload_failed",
                    problems=[str(p) for p in exc.problems],
                    message="the new rules file is invalid; the old rules stay in force",
                )
                continue
            except Exception as exc:  # unreadable mid-swap, say: the watcher must live on
                log.error(
                    "rules_reload_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    message="the new rules file could not be read; the old rules stay in force",
                )
                continue
            missing = missing_executors(ruleset.action_types, self.executors)
            if missing:
                log.error("rules_reload_failed", missing_action_types=missing)
                continue
            self.ruleset = ruleset
            for worker in self.workers.values():
                if worker.pipeline is not None:
                    worker.pipeline.ruleset = ruleset
            log.info("rules_reloaded", rules=len(ruleset.rules), path=str(path))

    async def _watch_lag(self) -> None:
        """Lag per owned partition (last enqueued - checkpointed), for metrics and /readyz,
        and the stall watchdog: a stalled partition is reconnected, at most once per stall
        timeout, and reported until events flow again."""
        # Each read opens a management connection (a TLS handshake against Event Hubs):
        # every 15 s per owned partition is plenty for a lag gauge and a 60 s stall timeout.
        period = min(15.0, max(0.5, self.settings.stall_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.metrics.owned.set(len(self.workers))
            for pid, worker in list(self.workers.items()):
                try:
                    props = await asyncio.wait_for(
                        self.client.get_partition_properties(pid), timeout=10
                    )
                except Exception as exc:  # the hub is away (or slow): report it, keep going
                    since = self.hub_error[0] if self.hub_error else time.monotonic()
                    self.hub_error = (since, repr(exc))
                    continue
                self.hub_error = None
                last = int(props["last_enqueued_sequence_number"])
                done = worker.committed.sequence_number if worker.committed else -1
                worker.lag = max(0, last - done)
                worker.unread = max(0, last - max(done, worker.received))
                self.metrics.lag.labels(pid).set(worker.lag)
                age = time.monotonic() - worker.checkpoint_moved_at
                self.metrics.checkpoint_age.labels(pid).set(age if worker.lag else 0)
            for pid in self.orphaned_partitions():
                # Its receive task is gone but no close came: stop its actions and hand over.
                worker = self.workers.pop(pid, None)
                if worker is not None:
                    log.warning("partition_closed_without_sdk_close", partition_id=pid)
                    self.metrics.forget_partition(pid)
                    await worker.close(release=True, flush=False)
            stalled = self.stalled_partitions()
            self.metrics.stalled.set(len(stalled))
            now = time.monotonic()
            for pid in stalled:
                worker = self.workers[pid]
                if now - worker.reconnected_at < self.settings.stall_timeout:
                    continue
                worker.reconnected_at = now
                if self.reconnect(pid):
                    self.metrics.reconnects.labels(pid).inc()
                    log.warning(
                        "partition_stalled_reconnecting",
                        partition_id=pid,
                        unread=worker.unread,
                        silent_s=round(now - worker.last_event_at, 1),
                    )

    def count_result(self, result: str, planned: PlannedAction, error: str) -> None:
        self.metrics.actions.labels(planned.action.type, result).inc()
        if result == "done":
            self.stats.actions += 1
        elif result == "skipped":
            self.stats.skipped += 1
        else:
            self.stats.action_failures += 1

    # --- SDK callbacks ------------------------------------------------------------------

    async def _on_initialize(self, context: Any) -> None:
        # The SDK retries a lost connection without pause and then re-claims the partition
        # at once: while the hub is unreachable that is a busy loop. Back off per partition.
        failures = self._failures.get(context.partition_id, 0)
        if failures:
            delay = min(0.5 * 2 ** (failures - 1), 30.0)
            log.info(
                "partition_reconnect_backoff", partition_id=context.partition_id, delay_s=delay
            )
            await asyncio.sleep(delay)
        pid = context.partition_id
        previous = self.workers.get(pid) or self._closing.get(pid)
        if previous is not None:
            # The SDK can start a partition again while the close of its previous start is
            # still running (a cancelled task's shielded clean-up): one worker per partition
            # at a time, or both would run the same events.
            log.info("partition_restart_waits_for_close", partition_id=pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(previous.closed.wait(), self.settings.shutdown_timeout + 15)
            if self.workers.get(pid) is previous:  # its close never came: close it here
                self.workers.pop(pid)
                await previous.close(release=True, flush=False)
        worker = PartitionWorker(self, pid)
        self.workers[pid] = worker
        self.metrics.owned.set(len(self.workers))
        self.stats.partitions.add(context.partition_id)
        await worker.ensure_started()

    async def _on_batch(self, context: Any, events: list[Any]) -> None:
        worker = self.workers.get(context.partition_id)
        if worker is None:
            return
        self._failures.pop(context.partition_id, None)  # connected again
        await worker.ensure_started()
        # Shielded so that losing the partition mid-batch lets the batch finish; close()
        # waits for it before the final save (a half-dispatched batch would be lost).
        worker.busy = asyncio.ensure_future(worker.process(events))
        await asyncio.shield(worker.busy)

    async def _on_close(self, context: Any, reason: Any) -> None:
        worker = self.workers.pop(context.partition_id, None)
        if worker is None:
            return
        self.metrics.forget_partition(context.partition_id)  # its new owner reports it now
        flush = self._stop.is_set() and self.stop_when_idle is not None
        self._closing[context.partition_id] = worker
        try:
            await worker.close(release=True, flush=flush)
        finally:
            if self._closing.get(context.partition_id) is worker:
                del self._closing[context.partition_id]
        log.info(
            "partition_lost" if "LOST" in str(reason) else "partition_stopped",
            partition_id=context.partition_id,
            reason=str(reason),
        )

    async def _on_error(self, context: Any, error: Exception) -> None:
        partition = getattr(context, "partition_id", None)
        if partition is not None:
            self._failures[partition] = self._failures.get(partition, 0) + 1
        log.warning("eventhub_error", partition_id=partition, error=repr(error))

    # --- running ------------------------------------------------------------------------

    async def run(self, client: Any, store: BlobPartitionStore) -> RunStats:
        self.client = client
        self.store = store
        try:
            partition_ids = await client.get_partition_ids()
        except Exception as exc:
            raise _hub_unreachable(store.fully_qualified_namespace, client, exc) from None
        positions, inclusive = self.start_positions.sdk(partition_ids)
        for pid in partition_ids:
            if self.start_positions.for_partition(pid).kind is PositionKind.LATEST:
                # `@latest` would be resolved when the link attaches, after our initial
                # checkpoint: pin it now so nothing enqueued in between is skipped.
                props = await client.get_partition_properties(pid)
                last = int(props["last_enqueued_sequence_number"])
                self.latest[pid] = Mark(last, str(props["last_enqueued_offset"]))
                positions[pid], inclusive[pid] = (last, False) if last >= 0 else ("-1", False)
        receiving = asyncio.ensure_future(
            client.receive_batch(
                on_event_batch=self._on_batch,
                on_partition_initialize=self._on_initialize,
                on_partition_close=self._on_close,
                on_error=self._on_error,
                max_batch_size=300,
                max_wait_time=min(1.0, max(0.2, self.ruleset.ordering.grace_s / 2)),
                starting_position=positions,
                starting_position_inclusive=inclusive,
                prefetch=300,
            )
        )
        watcher = asyncio.ensure_future(self._watch_idle(partition_ids))
        lag_watcher = asyncio.ensure_future(self._watch_lag())
        reloader = asyncio.ensure_future(self._watch_rules())
        stopping = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        log.info("worker_stopping", owned=sorted(self.workers))
        try:
            # Each partition's close() keeps to shutdown_timeout; the margin covers the SDK's
            # own link shutdown and its one-second polling loop.
            await asyncio.wait_for(client.close(), self.settings.shutdown_timeout + 15)
        except TimeoutError:
            log.error("shutdown_timeout", left=sorted(self.workers))
        # The SDK does not always call on_partition_close (a receive task cancelled while
        # its consumer was being replaced skips it): close what is left here, before the
        # executors go, or its in-flight actions would fail against closed clients.
        flush = self.stop_when_idle is not None
        for pid in list(self.workers):
            worker = self.workers.pop(pid, None)
            if worker is not None:
                log.warning("partition_closed_without_sdk_close", partition_id=pid)
                await worker.close(release=True, flush=flush)
        for worker in list(self._closing.values()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.closed.wait(), self.settings.shutdown_timeout)
        lag_watcher.cancel()
        reloader.cancel()
        for task in (receiving, stopping, watcher, lag_watcher, reloader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if receiving in done and receiving.exception() is not None:
            raise WorkerError(f"receiving stopped: {receiving.exception()}")
        return self.stats

    async def _watch_idle(self, partition_ids: list[str]) -> None:
        """`--stop-when-idle N`: stop once we own our share and nothing arrived for N s."""
        if self.stop_when_idle is None:
            return
        expiry = self.settings.ownership_expiry
        owned_since: float | None = None
        while True:
            await asyncio.sleep(0.25)
            if not self.workers or any(w.pipeline is None for w in self.workers.values()):
                continue
            try:
                ownership = await self.store.list_ownership()
            except Exception:  # storage hiccup: check again shortly
                continue
            now = time.time()
            live = {
                o["partition_id"]: o["owner_id"]
                for o in ownership
                if o.get("owner_id") and now - float(o.get("last_modified_time", 0)) < expiry
            }
            owners = set(live.values()) or {"us"}
            mine = len(self.workers)  # the SDK's owner id is its own; our callbacks know ours
            if len(live) < len(partition_ids) or mine < len(partition_ids) // len(owners):
                owned_since = None  # idle time counts only once we own our share
                continue
            if owned_since is None:
                owned_since = time.monotonic()
            quiet_since = max(owned_since, self._last_event)
            if time.monotonic() - quiet_since >= self.stop_when_idle:
                log.info("idle_stop", idle_s=self.stop_when_idle)
                self.stop()
                return


def install_signal_handlers(consumer: Consumer) -> None:
    """First SIGTERM/SIGINT drains and stops; a second one exits at once."""
    loop = asyncio.get_running_loop()
    count = 0

    def handler(signum: int) -> None:
        nonlocal count
        count += 1
        if count > 1:
            log.error("second_signal_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        consumer.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handler, signum)


def remove_signal_handlers() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


async def run_worker(
    settings: Settings,
    ruleset: RuleSet,
    start_positions: StartPositions,
    *,
    stop_when_idle: float | None = None,
    executors: Mapping[str, Executor] | None = None,
) -> RunStats:
    """Build the clients from settings, check storage, run until stopped."""
    from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError

    from worker.actions import available_executors
    from worker.connections import blob_container, checkpoint_store, consumer_client

    consumer = Consumer(
        settings,
        ruleset,
        available_executors(settings) if executors is None else executors,
        environ=os.environ,
        start_positions=start_positions,
        stop_when_idle=stop_when_idle,
    )
    container = blob_container(settings)
    address = f"{container.url}"
    async with container:
        try:
            exists = await container.exists(retry_total=0, connection_timeout=10)
        except (ServiceRequestError, HttpResponseError, AzureError) as exc:
            raise UnreachableError(
                "the checkpoint storage",
                address,
                exc,
                "Check AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING (or _URL and the "
                "identity's Storage Blob Data Contributor role), and that this network "
                "reaches the account on port 443.",
            ) from None
        if not exists:
            if not settings.create_container:
                raise ConfigError(
                    f"blob container {address} does not exist; create it or set "
                    "AML_WORKER_CREATE_CONTAINER=true"
                )
            with contextlib.suppress(HttpResponseError):
                await container.create_container()
            log.info("container_created", container=address)
        store_sdk = checkpoint_store(settings)
        client = consumer_client(
            settings, consumer_group=settings.consumer_group, checkpoint_store=store_sdk
        )
        async with store_sdk:
            store = BlobPartitionStore(
                container,
                store_sdk,
                fully_qualified_namespace=client._address.hostname,  # as the SDK names blobs
                eventhub_name=client.eventhub_name,
                consumer_group=settings.consumer_group,
            )
            install_signal_handlers(consumer)
            http = None
            if settings.http_port.lower() != "off":
                try:
                    port = int(settings.http_port)
                except ValueError:
                    raise ConfigError(
                        f"AML_WORKER_HTTP_PORT must be a port number or 'off', not "
                        f"{settings.http_port!r}"
                    ) from None
                http = HealthServer(consumer.metrics, consumer, host=settings.http_host, port=port)
                await http.start()
            log.info(
                "worker_started",
                eventhub=client.eventhub_name,
                consumer_group=settings.consumer_group,
                owner_id=consumer.owner_id,
                rules=len(ruleset.rules),
            )
            try:
                return await consumer.run(client, store)
            finally:
                remove_signal_handlers()
                if http is not None:
                    await http.stop()
                for executor in consumer.executors.values():
                    with contextlib.suppress(Exception):
                        await executor.aclose()
