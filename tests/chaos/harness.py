"""Shared harness of the reliability experiments (tests/chaos, `make soak`).

Everything runs on loopback: `dev-hub` (the input hub `aml-events` and a `forward` hub for
the ledger-protected `eventhub` action), Azurite, worker processes (`tests.workers.Env`) and
the peers below. The pieces, in the order an experiment uses them:

- `build_stream(...)` → `Stream`: a known stream (run status changes over many objects,
  shuffled within and beyond the grace window, with redeliveries), already split into
  partitions and chunks. The *expected* actions come from the pure pipeline
  (`PartitionPipeline`, exactly what `replay --source file: --dry-run` runs) over each
  partition's arrival order, so the test never hard-codes what the worker should do.
- `chaos_rules(...)`: the rules file (a webhook = idempotent target, an `eventhub` forward =
  ledger-protected), secrets from `peer_environ(...)`.
- `WebhookPeer`: an aiohttp receiver that records every request (key, event, time, status
  answered); it counts first deliveries per `Idempotency-Key` as a deduping target would.
  `respond` lets a test script outages (status codes, delays).
- `ForwardReader`: a consumer of the `forward` hub in a thread, recording each message's
  idempotency key; `caught_up()` waits until it has read everything the hub holds.
- `Publisher`: sends a stream's chunks to their partitions (explicit partition ids, so the
  arrival order per partition is the one the expected plan was computed from) and records
  when each event was published (for lag).
- `WorkerPool`: start / SIGKILL / restart / scale worker processes.
- `ledger_keys(...)`: the ledger entries in Azurite (what a crash cannot repeat).
- `Figures` + `write_result(...)`: the JSON result (bench/results/ in full mode, else tmp).
- `Experiment`: one run end to end: SIGKILL-and-restart with the ledger window measured at
  each kill, `finish()` (wait for every key and checkpoint, SIGTERM, gather `Figures`),
  `failures()` (the contract, as sentences).

`SOAK` is true under `AML_WORKER_SOAK=full` (`make soak`); short forms run in `make test`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import ROOT, TOPIC, eg, free_port
from tests.workers import Env, Worker
from worker.events import Origin
from worker.pipeline import PartitionPipeline
from worker.rules import load_rules

__all__ = [
    "FORWARD_ACTION",
    "HOOK_ACTION",
    "RESULTS",
    "RULE",
    "SOAK",
    "Delivery",
    "Figures",
    "ForwardReader",
    "Kill",
    "Message",
    "Publisher",
    "Stream",
    "WebhookPeer",
    "WorkerPool",
    "build_stream",
    "chaos_rules",
    "checkpoints_at_end",
    "expected_actions",
    "lag_figures",
    "ledger_keys",
    "order_violations",
    "peer_environ",
    "timed",
    "wait_until",
    "write_result",
]

SOAK = os.environ.get("AML_WORKER_SOAK", "").lower() == "full"
RESULTS = ROOT / "bench" / "results"
RULE = "chaos"
HOOK_ACTION = "hook"  # action ids: the idempotency keys depend on them
FORWARD_ACTION = "fwd"
STATUSES = ("Queued", "Preparing", "Starting", "Running", "Finalizing", "Completed")
BASE_TIME = datetime(2024, 6, 10, 8, 0, tzinfo=UTC)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 0.1 s; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


# --- the stream and what it must cause ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message body for one partition; `event_id` is None for non-event bodies."""

    partition: str
    body: bytes
    event_id: str | None
    subject: str | None


@dataclass(slots=True)
class Stream:
    """A known stream, split by partition, with what the pure pipeline says it must cause.

    `chunks[i]` is a list of messages; within a partition, the concatenation of the chunks
    is exactly the arrival order `expected` was computed from. `expected[action_id]` maps
    each idempotency key to (subject, event id); `order[action_id][subject]` lists that
    object's keys in the order the pipeline released them (sequencer order; stale events
    are not in it), which is the order a target must first see them in.
    """

    partitions: int
    chunks: list[list[Message]]
    expected: dict[str, dict[str, tuple[str, str]]]
    order: dict[str, dict[str, list[str]]]
    summary: dict[str, int]
    reordered_objects: int = 0

    @property
    def messages(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def keys(self, action_id: str = HOOK_ACTION) -> set[str]:
        return set(self.expected[action_id])

    def event_of_key(self, action_id: str = HOOK_ACTION) -> dict[str, str]:
        return {key: event_id for key, (_, event_id) in self.expected[action_id].items()}


def _event_body(obj: int, step: int, at: datetime, partition: int) -> dict[str, Any]:
    status = STATUSES[step % len(STATUSES)]
    return eg(
        f"chaos-{obj}-{step}",
        subject=f"experiments/chaos/runs/p{partition}-r{obj}",
        time=at.isoformat().replace("+00:00", "Z"),
        data={"runStatus": status, "step": step, "runId": f"r{obj}"},
    )


def build_stream(
    rules: Path,
    *,
    events: int,
    partitions: int = 8,
    objects: int = 400,
    chunks: int = 20,
    spacing_s: float = 0.1,
    reorder_rate: float = 0.1,
    reorder_span: int = 6,
    stale_rate: float = 0.005,
    stale_span: int = 40,
    duplicate_rate: float = 0.03,
    seed: int = 7,
) -> Stream:
    """A stream of `events` distinct events (plus redeliveries) and its expected actions.

    Each object (a run) emits bursts of 2-5 status changes. Objects are spread over
    partitions (object j → partition j % partitions, sent with an explicit partition id, so
    an object's events share a partition as with the recommended PartitionKey = subject).
    Event time advances `spacing_s` per event overall.
    The events are cut into `chunks` consecutive time ranges; within one chunk and partition,
    a `reorder_rate` share of events arrive up to `reorder_span` places late (inside the
    grace window of `chaos_rules` at the default spacing: reordered), a `stale_rate` share
    up to `stale_span` places late (beyond it: stale, dropped) and a `duplicate_rate` share
    is delivered again later in the same or the next chunk (a redelivery: dropped as a
    duplicate). Shuffles never cross a chunk boundary, so whether a chunk's last events are
    released by the next chunk's watermark or by the wall-clock grace of a quiet partition
    (`run`, not `replay`) cannot change the outcome.
    """
    rng = random.Random(seed)
    steps = [0] * objects
    # time-ordered events, as (partition, body) per chunk
    ordered: list[list[list[dict[str, Any]]]] = [
        [[] for _ in range(partitions)] for _ in range(chunks)
    ]
    obj, burst = 0, 0
    for i in range(events):
        if burst == 0:  # a run emits a few status changes in quick succession
            obj, burst = rng.randrange(objects), rng.randint(2, 5)
        burst -= 1
        partition = obj % partitions
        body = _event_body(obj, steps[obj], BASE_TIME + timedelta(seconds=i * spacing_s), partition)
        steps[obj] += 1
        ordered[i * chunks // events][partition].append(body)

    arrival: list[list[list[dict[str, Any]]]] = [
        [[] for _ in range(partitions)] for _ in range(chunks)
    ]
    for c in range(chunks):
        for p in range(partitions):
            bodies = ordered[c][p]
            # sort keys: position + displacement; ties keep the original order
            keyed = []
            for position, body in enumerate(bodies):
                draw = rng.random()
                if draw < stale_rate:
                    shift = rng.randint(stale_span // 2, stale_span)
                elif draw < stale_rate + reorder_rate:
                    shift = rng.randint(1, reorder_span)
                else:
                    shift = 0
                keyed.append((min(position + shift + 0.5 * (shift > 0), len(bodies)), body))
            keyed.sort(key=lambda item: item[0])
            arrival[c][p].extend(body for _, body in keyed)
    for c in range(chunks):
        for p in range(partitions):
            for body in list(arrival[c][p]):
                if rng.random() < duplicate_rate:
                    target = min(c + rng.randint(0, 1), chunks - 1)
                    lane = arrival[target][p]
                    start = lane.index(body) + 1 if target == c else 0
                    lane.insert(rng.randint(start, len(lane)), body)

    stream_chunks: list[list[Message]] = []
    for c in range(chunks):
        chunk = []
        for p in range(partitions):
            for body in arrival[c][p]:
                chunk.append(
                    Message(str(p), json.dumps(body).encode(), body["id"], body["subject"])
                )
        stream_chunks.append(chunk)

    expected, order, summary = expected_actions(rules, stream_chunks, partitions)
    stream = Stream(partitions, stream_chunks, expected, order, summary)
    stream.reordered_objects = _reordered_objects(stream)
    return stream


def _reordered_objects(stream: Stream) -> int:
    """Objects whose planned events arrived in another order than the pipeline releases
    them: the ones where keeping sequencer order takes actual reordering."""
    event_of = stream.event_of_key(HOOK_ACTION)
    arrived: dict[str, list[str]] = defaultdict(list)
    for chunk in stream.chunks:
        for message in chunk:
            if message.subject is not None and message.event_id not in arrived[message.subject]:
                arrived[message.subject].append(str(message.event_id))
    count = 0
    for subject, keys in stream.order.get(HOOK_ACTION, {}).items():
        released = [event_of[k] for k in keys]
        planned = set(released)
        if [e for e in arrived[subject] if e in planned] != released:
            count += 1
    return count


def expected_actions(
    rules: Path, chunks: list[list[Message]], partitions: int
) -> tuple[dict[str, dict[str, tuple[str, str]]], dict[str, dict[str, list[str]]], dict[str, int]]:
    """Run each partition's arrival order through the pure pipeline, as a dry-run replay
    of that partition would: (keys per action id, per-object key order, summary counts)."""
    ruleset = load_rules(rules, secrets="ignore")
    expected: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    order: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    summary: Counter[str] = Counter()
    for p in range(partitions):
        pipeline = PartitionPipeline(ruleset)
        lane = [m for chunk in chunks for m in chunk if m.partition == str(p)]
        steps = [
            pipeline.feed(m.body, Origin(partition_id=str(p), line=n + 1))
            for n, m in enumerate(lane)
        ]
        steps.append(pipeline.finish())
        for step in steps:
            for action in step.actions:
                action_id = action.action.id or str(action.action.index)
                expected[action_id][action.key] = (action.event.subject, action.event.id)
                order[action_id][action.event.subject].append(action.key)
        summary.update(pipeline.summary.as_dict())
    return (
        dict(expected),
        {a: dict(subjects) for a, subjects in order.items()},
        dict(summary),
    )


def chaos_rules(
    tmp_path: Path,
    *,
    grace: str = "5s",
    hook_retry: str = "{attempts: 30, initial: 0.2, max: 2}",
    hook_timeout: str = "5s",
    forward: bool = True,
) -> Path:
    """The experiments' rules: every run status change is POSTed to the webhook peer
    (`${CHAOS_HOOK_URL}`) and, when `forward`, forwarded to the `forward` hub
    (`${CHAOS_FORWARD}`). Retries are generous so an outage delays rather than
    dead-letters; a test about dead letters passes its own `hook_retry`."""
    path = tmp_path / "chaos.rules.yaml"
    actions = (
        f"      - {{type: webhook, id: {HOOK_ACTION}, url: '${{CHAOS_HOOK_URL}}', "
        f"timeout: {hook_timeout}, retry: {hook_retry}}}\n"
    )
    if forward:
        actions += (
            f"      - {{type: eventhub, id: {FORWARD_ACTION}, "
            "connection_string: '${CHAOS_FORWARD}', "
            "retry: {attempts: 30, initial: 0.2, max: 2}}\n"
        )
    path.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: {grace}}}\n"
        f"rules:\n  - name: {RULE}\n"
        "    filter: {includedEventTypes: [Microsoft.MachineLearningServices.RunStatusChanged]}\n"
        f"    actions:\n{actions}"
    )
    return path


def peer_environ(hook: WebhookPeer, forward_connection_string: str | None) -> dict[str, str]:
    """The environment variables `chaos_rules` refers to."""
    environ = {"CHAOS_HOOK_URL": hook.url}
    if forward_connection_string:
        environ["CHAOS_FORWARD"] = forward_connection_string
    return environ


# --- the webhook peer --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the webhook peer received, and what it answered."""

    key: str
    event_id: str
    subject: str
    at: float  # time.time() on arrival
    status: int


class WebhookPeer:
    """An aiohttp target in its own thread that records every request.

    It answers `status` (default 202), or what `respond(delivery_number, key)` returns
    (an int status, or a float = seconds to stall before answering 202) when a test sets it:
    that is how outages are scripted. A real target dedupes by `Idempotency-Key`: the
    *effect* of a key happens on its first 2xx answer (`first_deliveries`); everything
    after that is a raw repeat the target absorbs (`raw_repeats`).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 202
        self.respond: Callable[[int, str], int | float] | None = None
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            key = request.headers.get("Idempotency-Key", "")
            try:
                event = json.loads(body)[0]
                event_id, subject = str(event.get("id")), str(event.get("subject"))
            except (ValueError, LookupError, TypeError, AttributeError):
                event_id = subject = ""
            status = self.status
            if self.respond is not None:
                answer = self.respond(len(self.deliveries), key)
                if isinstance(answer, float):
                    await asyncio.sleep(answer)
                    status = 202
                else:
                    status = answer
            with self._lock:
                self.deliveries.append(Delivery(key, event_id, subject, time.time(), status))
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> WebhookPeer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the webhook peer did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def first_deliveries(self) -> dict[str, Delivery]:
        """Key → its first accepted (2xx) delivery: where a deduping target acts."""
        first: dict[str, Delivery] = {}
        for delivery in self.snapshot():
            if 200 <= delivery.status < 300 and delivery.key not in first:
                first[delivery.key] = delivery
        return first

    def accepted(self) -> Counter[str]:
        """How many 2xx answers each key got (1 = no repeat)."""
        return Counter(d.key for d in self.snapshot() if 200 <= d.status < 300)

    def raw_repeats(self) -> int:
        """Accepted requests beyond the first per key: what the target had to dedupe."""
        return sum(n - 1 for n in self.accepted().values())

    def order_by_subject(self) -> dict[str, list[str]]:
        """Per subject, keys in the order of their first accepted delivery."""
        ordered: dict[str, list[str]] = defaultdict(list)
        # Arrival order, not timestamps: a worker sends an object's next event only after
        # the previous one was answered, so list order is causal order.
        for delivery in self.first_deliveries().values():
            ordered[delivery.subject].append(delivery.key)
        return dict(ordered)


def order_violations(
    expected: dict[str, list[str]], seen: dict[str, list[str]]
) -> dict[str, tuple[list[str], list[str]]]:
    """Subjects whose keys were first delivered in another order than `expected` (the
    sequencer's). Keys never delivered are lost, not disordered: they are left out here."""
    bad = {}
    for subject, keys in expected.items():
        got = seen.get(subject, [])
        delivered = set(got)
        if [k for k in got if k in set(keys)] != [k for k in keys if k in delivered]:
            bad[subject] = (keys, got)
    return bad


# --- the forward hub reader ----------------------------------------------------------------


class ForwardReader:
    """Reads the `forward` hub from the start in its own thread, recording each message's
    `aml-worker-idempotency-key` property and arrival time (the ledger-protected action's
    effects, repeats included)."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.keys: list[tuple[str, float]] = []
        self.last_sequence: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._client: Any = None
        self._task: asyncio.Future[Any] | None = None

    def __enter__(self) -> ForwardReader:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        from azure.eventhub.aio import EventHubConsumerClient

        self._client = EventHubConsumerClient.from_connection_string(
            self.connection_string, consumer_group="$Default"
        )

        async def on_event(context: Any, event: Any) -> None:
            if event is None:
                return
            key = (event.properties or {}).get(b"aml-worker-idempotency-key", b"")
            self.keys.append((key.decode() if isinstance(key, bytes) else str(key), time.time()))
            self.last_sequence[context.partition_id] = event.sequence_number

        self._task = asyncio.ensure_future(
            self._client.receive(on_event, starting_position="-1", max_wait_time=1)
        )

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _hub_ends(self) -> dict[str, int]:
        ends = {}
        for pid in await self._client.get_partition_ids():
            props = await self._client.get_partition_properties(pid)
            if not props["is_empty"]:
                ends[pid] = props["last_enqueued_sequence_number"]
        return ends

    def caught_up(self, timeout_s: float = 30) -> None:
        """Wait until every message the hub holds now has been read."""
        ends = asyncio.run_coroutine_threadsafe(self._hub_ends(), self._loop).result(30)
        wait_until(
            lambda: all(self.last_sequence.get(p, -1) >= seq for p, seq in ends.items()),
            timeout_s,
            f"the forward reader to reach {ends}",
        )

    def counts(self) -> Counter[str]:
        return Counter(key for key, _ in list(self.keys))


# --- publishing ---------------------------------------------------------------------------


class Publisher:
    """Sends a stream's chunks with the real async producer, each message to its own
    partition id, from a thread. `published[event_id]` = time.time() after the first
    batch holding that event was accepted."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.published: dict[str, float] = {}
        self.chunks_sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._producer: Any = None
        self._paced: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> Publisher:
        from azure.eventhub.aio import EventHubProducerClient

        self._thread.start()
        self._producer = EventHubProducerClient.from_connection_string(self.connection_string)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._paced is not None:
            self._paced.join(120)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._producer.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _send(self, messages: list[Message]) -> None:
        from azure.eventhub import EventData

        lanes: dict[str, list[Message]] = defaultdict(list)
        for message in messages:
            lanes[message.partition].append(message)
        for partition, lane in lanes.items():
            batch = await self._producer.create_batch(partition_id=partition)
            in_batch: list[Message] = []
            for message in lane:
                try:
                    batch.add(EventData(message.body))
                except ValueError:  # batch full
                    await self._producer.send_batch(batch)
                    self._mark(in_batch)
                    batch, in_batch = await self._producer.create_batch(partition_id=partition), []
                    batch.add(EventData(message.body))
                in_batch.append(message)
            await self._producer.send_batch(batch)
            self._mark(in_batch)

    def _mark(self, messages: Iterable[Message]) -> None:
        now = time.time()
        for message in messages:
            if message.event_id is not None:
                self.published.setdefault(message.event_id, now)

    async def _ends(self) -> dict[str, int]:
        ends = {}
        for pid in await self._producer.get_partition_ids():
            props = await self._producer.get_partition_properties(pid)
            if not props["is_empty"]:
                ends[pid] = props["last_enqueued_sequence_number"]
        return ends

    def ends(self) -> dict[str, int]:
        """Last sequence number per non-empty partition of the input hub."""
        return asyncio.run_coroutine_threadsafe(self._ends(), self._loop).result(30)

    def send(self, messages: list[Message]) -> None:
        """Send messages now (blocking), keeping their order per partition."""
        asyncio.run_coroutine_threadsafe(self._send(messages), self._loop).result(120)
        self.chunks_sent += 1

    def start_paced(self, chunks: list[list[Message]], interval_s: float) -> None:
        """Send one chunk every `interval_s` from a background thread (see `done`)."""

        def pace() -> None:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                self.send(chunk)
                self._stop.wait(max(0.0, interval_s - (time.monotonic() - started)))

        self._paced = threading.Thread(target=pace, daemon=True)
        self._paced.start()

    @property
    def done(self) -> bool:
        return self._paced is None or not self._paced.is_alive()


# --- workers ------------------------------------------------------------------------------


@dataclass(slots=True)
class Kill:
    """One SIGKILL: when, which worker (its log), and the ledger window it left open."""

    at: float
    worker_log: str
    window_keys: list[str] = field(default_factory=list)


class WorkerPool:
    """Worker processes of one experiment on one `Env` (same hub, container, settings).

    `start()` adds a worker, `kill(worker)` SIGKILLs one, `kill_random(rng)` a random live
    one, `stop(worker)` sends SIGTERM and waits for the drain (exit 0 expected),
    `scale_to(n)` adds or gracefully stops workers. Every process ever started stays in
    `env.workers`, so `Env.close()` reaps them whatever the outcome.
    """

    def __init__(self, env: Env, rules: Path, *args: str) -> None:
        self.env = env
        self.rules = rules
        self.args = list(args)
        self.live: list[Worker] = []
        self.kills: list[Kill] = []
        self.started = 0
        self.stop_codes: list[int] = []

    def start(self) -> Worker:
        self.started += 1
        worker = self.env.start(self.rules, *self.args, name=f"w{self.started}")
        self.live.append(worker)
        return worker

    def kill(self, worker: Worker) -> Kill:
        worker.process.send_signal(signal.SIGKILL)
        worker.wait(30)
        self.live.remove(worker)
        kill = Kill(time.time(), str(worker.log_path))
        self.kills.append(kill)
        return kill

    def wait_owned(self, partitions: int, timeout_s: float = 60) -> None:
        """Wait until the workers own every partition (and so the container exists)."""

        async def count() -> int:
            from azure.storage.blob.aio import ContainerClient

            container = ContainerClient.from_connection_string(
                self.env.azurite.connection_string, self.env.container
            )
            async with container:
                if not await container.exists():  # no worker has created it yet
                    return 0
            return len(await self.env.owners())

        def owned() -> bool:
            return asyncio.run(count()) >= partitions

        wait_until(owned, timeout_s, f"the workers to own {partitions} partitions")

    def kill_random(self, rng: random.Random) -> Kill:
        return self.kill(rng.choice(self.live))

    def stop(self, worker: Worker, timeout_s: float = 60) -> int:
        worker.process.send_signal(signal.SIGTERM)
        code = worker.wait(timeout_s)
        self.live.remove(worker)
        self.stop_codes.append(code)
        return code

    def wait_started(self, worker: Worker, timeout_s: float = 60) -> None:
        """Wait for `worker_started` in its log: signal handlers are in place (a SIGTERM
        before that ends the process by the default action, exit -15)."""
        wait_until(
            lambda: '"event": "worker_started"' in worker.log_path.read_text(),
            timeout_s,
            f"{worker.log_path.name} to start",
        )

    def scale_to(self, count: int) -> None:
        """Add workers (waiting until each is up) or SIGTERM the newest surplus together."""
        added = [self.start() for _ in range(count - len(self.live))]
        for worker in added:
            self.wait_started(worker)
        surplus = self.live[count:]  # stopped together, as a scale-down does
        for worker in surplus:
            worker.process.send_signal(signal.SIGTERM)
        for worker in surplus:
            self.stop_codes.append(worker.wait(60))
            self.live.remove(worker)

    def stop_all(self, timeout_s: float = 60) -> list[int]:
        """SIGTERM every live worker at once, then wait for each drain."""
        workers = list(self.live)
        for worker in workers:
            worker.process.send_signal(signal.SIGTERM)
        codes = []
        for worker in workers:
            codes.append(worker.wait(timeout_s))
            self.live.remove(worker)
        self.stop_codes.extend(codes)
        return codes

    def crashed(self) -> list[Worker]:
        """Live workers whose process ended by itself (a crash the test did not cause)."""
        return [w for w in self.live if w.process.poll() is not None]

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """Log lines named `name` from every worker this pool's env ever ran."""
        needle = f'"event": "{name}"'
        found = []
        for worker in self.env.workers:
            with contextlib.suppress(OSError):
                for text in worker.log_path.read_text().splitlines():
                    if needle in text and text.startswith("{"):
                        with contextlib.suppress(ValueError):
                            found.append({**json.loads(text), "log": str(worker.log_path)})
        return found


async def _ledger_keys(env: Env) -> set[str]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob.aio import ContainerClient

    from worker.state import decode_records

    keys: set[str] = set()
    container = ContainerClient.from_connection_string(env.azurite.connection_string, env.container)
    async with container:
        try:
            names = [b.name async for b in container.list_blobs() if "/ledger/" in b.name]
        except ResourceNotFoundError:  # no worker has created the container yet
            return keys
        for name in names:
            data = await (await container.download_blob(name)).readall()
            for record in decode_records(data):
                keys.update(entry[0] for entry in record.get("entries", []))
    return keys


def ledger_keys(env: Env) -> set[str]:
    """Every idempotency key in the env's ledgers (all partitions) right now."""
    return asyncio.run(_ledger_keys(env))


async def _checkpoint_ends(env: Env) -> dict[str, int]:
    return await env.checkpoints()


def checkpoints_at_end(env: Env, ends: dict[str, int]) -> bool:
    """Every partition's checkpoint has reached its last sequence number."""
    marks = asyncio.run(_checkpoint_ends(env))
    return all(marks.get(p, -1) >= seq for p, seq in ends.items())


# --- figures ------------------------------------------------------------------------------


@dataclass(slots=True)
class Figures:
    """What one experiment measured; written as JSON by `write_result`."""

    experiment: str
    mode: str  # "full" | "short"
    events: int = 0  # distinct events published
    messages: int = 0  # bodies published (redeliveries included)
    partitions: int = 0
    workers: str = ""
    kills: int = 0
    expected_actions: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    raw_repeats_webhook: int = 0
    ledger_repeats: int = 0
    ledger_window_keys: int = 0  # accepted, not yet in the ledger, at some kill
    kills_hitting_window: int = 0
    order_violations: int = 0
    objects_checked: int = 0
    stale_expected: int = 0
    reordered_objects: int = 0  # objects whose events arrived out of sequencer order
    duplicates_expected: int = 0
    max_lag_s: float = 0.0
    p99_lag_s: float = 0.0
    wall_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def partition_of(subject: str) -> str:
    """The partition `build_stream` put a subject on (its `p<n>-` prefix)."""
    return subject.rsplit("/", 1)[-1].split("-", 1)[0].removeprefix("p")


def lag_figures(
    first: dict[str, Delivery], published: dict[str, float], event_of_key: dict[str, str]
) -> tuple[float, float]:
    """(max, p99) of first accepted delivery time minus publish time over the expected keys."""
    lags = sorted(
        first[key].at - published[event_id]
        for key, event_id in event_of_key.items()
        if key in first and event_id in published
    )
    if not lags:
        return 0.0, 0.0
    return round(lags[-1], 2), round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 2)


def write_result(figures: Figures, tmp_path: Path, *, publish: bool = True) -> Path:
    """bench/results/<experiment>.json in full mode; `tmp_path` otherwise (the tree stays
    clean under `make test`) or when not `publish` (a diagnostic, not a README figure).
    Returns the path written."""
    directory = RESULTS if figures.mode == "full" and publish else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{figures.experiment}.json"
    record = asdict(figures)
    record["written_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["command"] = (
        "make soak" if figures.mode == "full" else "pytest -q tests/chaos (short form)"
    )
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{figures.experiment}: {json.dumps(record)}")
    return path


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    """`with timed() as elapsed:` … `elapsed()` seconds since entry."""
    started = time.monotonic()
    yield lambda: round(time.monotonic() - started, 2)


# --- one experiment end to end --------------------------------------------------------------


class Experiment:
    """Drives one experiment on a `WorkerPool` and checks the common assertions.

    Typical use (see test_kill.py): `publisher.start_paced(...)`, then disturb the pool
    (`kill_and_restart`, `pool.scale_to`), then `finish()` waits until every expected key
    was delivered and every checkpoint reached the end, stops the workers gracefully and
    returns the `Figures`; `failures(figures)` lists what broke the contract.
    """

    def __init__(
        self,
        name: str,
        *,
        env: Env,
        stream: Stream,
        pool: WorkerPool,
        peer: WebhookPeer,
        forward: ForwardReader | None,
        publisher: Publisher,
    ) -> None:
        self.name = name
        self.env = env
        self.stream = stream
        self.pool = pool
        self.peer = peer
        self.forward = forward
        self.publisher = publisher
        self.started = time.monotonic()
        self.unexpected_exits: list[str] = []

    def kill_and_restart(self, worker: Worker | None, rng: random.Random) -> Kill:
        """SIGKILL `worker` (or a random live one), record the ledger window it left open,
        start a replacement. The window = forwarded messages the hub holds minus the keys
        in the ledger right after the kill (read at once: no other owner can take the
        partitions over before the ownership expiry, so none of those can be repeats)."""
        self._check_alive()
        kill = self.pool.kill(worker) if worker is not None else self.pool.kill_random(rng)
        if self.forward is not None:
            ledgered = ledger_keys(self.env)  # at once: nobody can have taken over yet
            time.sleep(0.5)  # the hub may still be handling frames the dead worker sent
            self.forward.caught_up()
            kill.window_keys = sorted(set(self.forward.counts()) - ledgered)
        self.pool.start()
        return kill

    def _check_alive(self) -> None:
        for worker in self.pool.crashed():
            self.unexpected_exits.append(
                f"{worker.log_path} exited {worker.process.returncode}:\n"
                + worker.log_path.read_text()[-2000:]
            )
            self.pool.live.remove(worker)
            self.pool.start()

    def finish(self, timeout_s: float = 240) -> Figures:
        """Wait for the end of the stream, stop the workers (SIGTERM), gather figures."""
        wait_until(lambda: self.publisher.done, timeout_s, "the publisher to send every chunk")
        ends = self.publisher.ends()
        hook_keys = self.stream.keys(HOOK_ACTION)
        deadline = time.monotonic() + timeout_s
        finished = False
        seen, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            self._check_alive()
            delivered = set(self.peer.first_deliveries())
            if len(delivered) != seen:
                seen, changed = len(delivered), time.monotonic()
            at_end = checkpoints_at_end(self.env, ends)
            if hook_keys <= delivered and at_end:
                finished = True
                break
            if at_end and time.monotonic() - changed > 15:
                # Every checkpoint passed the end and nothing new arrives: what is
                # missing now will never come (lost), no point waiting for the deadline.
                finished = True
                break
            time.sleep(0.5)
        wall = time.monotonic() - self.started
        # Where each partition's checkpoint stands: keys missing while every checkpoint is at
        # the end are lost for good; behind the end, the workers had not finished (slow or
        # stuck) when the time ran out.
        marks = asyncio.run(_checkpoint_ends(self.env))
        behind = {p: seq - marks.get(p, -1) for p, seq in ends.items() if marks.get(p, -1) < seq}
        self.pool.stop_all()
        if self.forward is not None:
            self.forward.caught_up()
        figures = self._figures(wall)
        figures.extra["finished_in_time"] = finished
        figures.extra["checkpoints_behind_at_end"] = behind
        return figures

    def _figures(self, wall_s: float) -> Figures:
        stream, peer = self.stream, self.peer
        first = peer.first_deliveries()
        accepted = peer.accepted()
        handovers = self.handover_timeouts()
        figures = Figures(
            experiment=self.name,
            mode="full" if SOAK else "short",
            events=len({m.event_id for chunk in stream.chunks for m in chunk}),
            messages=stream.messages,
            partitions=stream.partitions,
            workers=f"{self.pool.started} processes started",
            kills=len(self.pool.kills),
            stale_expected=stream.summary.get("stale", 0),
            reordered_objects=stream.reordered_objects,
            duplicates_expected=stream.summary.get("duplicate", 0),
            wall_time_s=round(wall_s, 1),
        )
        figures.expected_actions = {a: len(keys) for a, keys in stream.expected.items()}
        lost_hook = stream.keys(HOOK_ACTION) - set(first)
        figures.lost[HOOK_ACTION] = len(lost_hook)
        lost_sample = [
            [HOOK_ACTION, key, *stream.expected[HOOK_ACTION][key]] for key in sorted(lost_hook)
        ]
        figures.raw_repeats_webhook = sum(n - 1 for n in accepted.values())
        unexpected = {
            "webhook": sorted(set(accepted) - stream.keys(HOOK_ACTION))[:20],
        }
        if self.forward is not None and FORWARD_ACTION in stream.expected:
            forwarded = self.forward.counts()
            lost_forward = stream.keys(FORWARD_ACTION) - set(forwarded)
            figures.lost[FORWARD_ACTION] = len(lost_forward)
            lost_sample += [
                [FORWARD_ACTION, key, *stream.expected[FORWARD_ACTION][key]]
                for key in sorted(lost_forward)
            ]
            figures.ledger_repeats = sum(n - 1 for n in forwarded.values())
            window: set[str] = set()
            for kill in self.pool.kills:
                window.update(kill.window_keys)
            figures.ledger_window_keys = sum(len(k.window_keys) for k in self.pool.kills)
            repeated = {k for k, n in forwarded.items() if n > 1}
            figures.kills_hitting_window = sum(
                1 for k in self.pool.kills if repeated & set(k.window_keys)
            )
            unexpected["forward"] = sorted(set(forwarded) - stream.keys(FORWARD_ACTION))[:20]
            # Outside every kill window: is it a hand-over from a *live* owner that the new
            # owner stopped waiting for (its drain overran the hand-over bound)?
            live_partitions = {p for p, _, alive in handovers if alive}
            outside = repeated - window
            subject_of = {k: subj for k, (subj, _) in stream.expected[FORWARD_ACTION].items()}
            explained = {k for k in outside if partition_of(subject_of[k]) in live_partitions}
            figures.extra["ledger_repeats_in_kill_windows"] = sum(
                forwarded[k] - 1 for k in repeated & window
            )
            figures.extra["ledger_repeats_after_live_handover_timeout"] = sum(
                forwarded[k] - 1 for k in explained
            )
            figures.extra["ledger_repeats_outside_window"] = sorted(outside - explained)[:20]
        violations = order_violations(stream.order[HOOK_ACTION], peer.order_by_subject())
        figures.order_violations = len(violations)
        figures.objects_checked = len(stream.order[HOOK_ACTION])
        figures.max_lag_s, figures.p99_lag_s = lag_figures(
            first, self.publisher.published, stream.event_of_key(HOOK_ACTION)
        )
        figures.extra.update(
            {
                "unexpected_keys": unexpected,
                "lost_sample": lost_sample[:20],
                "kill_log": [
                    [
                        datetime.fromtimestamp(k.at, UTC).isoformat(),
                        Path(k.worker_log).name,
                        len(k.window_keys),
                    ]
                    for k in self.pool.kills
                ],
                "order_violations_sample": dict(list(violations.items())[:3]),
                "stop_exit_codes": self.pool.stop_codes,
                "handover_timeouts": {
                    "live_previous_owner": sum(1 for *_, alive in handovers if alive),
                    "dead_previous_owner": sum(1 for *_, alive in handovers if not alive),
                },
                "unexpected_exits": [e[:300] for e in self.unexpected_exits],
                "dead_letters": len(self.pool.log_events("action_dead_lettered")),
                "webhook_requests": len(peer.snapshot()),
            }
        )
        return figures

    def handover_timeouts(self) -> list[tuple[str, float, bool]]:
        """(partition, time, was the previous owner alive) for every `handover_timeout` a
        worker logged: a new owner that stopped waiting for the previous one's `released`
        mark. A dead previous owner (killed) is expected; a live one means both ran the
        partition's pending actions at the same time."""
        owners = {  # owner id -> log file
            line["owner_id"]: line["log"] for line in self.pool.log_events("worker_started")
        }
        killed_at = {kill.worker_log: kill.at for kill in self.pool.kills}
        found = []
        for line in self.pool.log_events("handover_timeout"):
            at = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            previous = owners.get(str(line.get("previous_owner", "")).split("/")[0])
            alive = previous is not None and killed_at.get(previous, float("inf")) > at
            found.append((str(line.get("partition_id")), at, alive))
        return found

    def failures(self, figures: Figures, *, ledger_repeats_allowed: bool = True) -> list[str]:
        """What broke the contract, as readable sentences (empty = all held)."""
        problems = []
        if not figures.extra.get("finished_in_time", True):
            problems.append(
                "the workers did not finish in time; messages not yet checkpointed per "
                f"partition: {figures.extra.get('checkpoints_behind_at_end')}"
            )
        for action, lost in figures.lost.items():
            if lost:
                problems.append(f"{lost} expected {action} actions never delivered")
        for target, keys in figures.extra["unexpected_keys"].items():
            if keys:
                problems.append(f"{target} got keys the pipeline does not plan: {keys}")
        if figures.extra.get("ledger_repeats_outside_window"):
            problems.append(
                "ledger-protected actions repeated outside any kill's window: "
                f"{figures.extra['ledger_repeats_outside_window']}"
            )
        in_windows = figures.extra.get("ledger_repeats_in_kill_windows", 0)
        if in_windows > figures.ledger_window_keys:
            problems.append(
                f"{in_windows} ledger repeats > {figures.ledger_window_keys} "
                "actions in the kill windows"
            )
        unexplained = figures.ledger_repeats - figures.extra.get(
            "ledger_repeats_after_live_handover_timeout", 0
        )
        if not ledger_repeats_allowed and unexplained:
            problems.append(f"{unexplained} ledger-protected actions repeated")
        if figures.order_violations:
            problems.append(
                f"{figures.order_violations} objects out of sequencer order, e.g. "
                f"{figures.extra['order_violations_sample']}"
            )
        if any(code != 0 for code in figures.extra["stop_exit_codes"]):
            problems.append(f"SIGTERM exit codes {figures.extra['stop_exit_codes']}")
        if figures.extra["unexpected_exits"]:
            problems.append(f"workers died by themselves: {figures.extra['unexpected_exits']}")
        return problems
