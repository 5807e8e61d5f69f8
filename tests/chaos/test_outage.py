"""Outages of what the worker depends on: storage (Azurite) and the hub (dev-hub).

Each experiment stops one server mid-stream, keeps it down (30 s in `make soak`, a few
seconds in `make test`) and starts it again on the same port with the same persisted data
(Azurite `--location`, dev-hub `--data-dir`), as a storage account or namespace that comes
back after a regional blip would. Throughout, the one worker process must keep running,
answer `/readyz` (200 again once the server is back; in the 30 s form, 503 naming the
cause while it is away), and finish with every expected action delivered: no event lost,
none of the ledger-protected forwards repeated (counted in the forward hub itself), and
per-object order kept. The worker's CPU use while the server is away is measured too: a
worker that spins on a dead link starves its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import PARTITIONS
from tests.chaos.harness import (
    FORWARD_ACTION,
    HOOK_ACTION,
    SOAK,
    Figures,
    ForwardReader,
    Publisher,
    Stream,
    WebhookPeer,
    WorkerPool,
    build_stream,
    chaos_rules,
    lag_figures,
    order_violations,
    timed,
    wait_until,
    write_result,
)
from tests.conftest import Azurite, DevHubProcess, free_port
from tests.workers import Env

OUTAGE_S = 30.0 if SOAK else 5.0
EVENTS = 6000 if SOAK else 120
CHUNKS = 60 if SOAK else 6
# /readyz is only asked to flip for outages this long: the hub check tolerates 10 s of
# failed `$management` reads (each up to a 10 s timeout) before it reports the hub away
# (worker/consumer.py, readiness_problems and _watch_lag), so the short forms check
# recovery and losses only.
READINESS_OUTAGE_S = 20.0


@pytest.fixture
def own_azurite(tmp_path) -> Iterator[Azurite]:
    """An Azurite of this test alone: stopping the session's one would break other tests."""
    server = Azurite(tmp_path / "azurite")
    server.start()
    yield server
    server.stop()


def chaos_environment(
    tmp_path: Path, hub: DevHubProcess, azurite: Azurite, hook: WebhookPeer
) -> Env:
    """Worker settings as `chaos_env` makes them, on the given servers, with a known
    health port (the chaos settings log at `warning`, so `http_listening` is not logged)."""
    env = Env(tmp_path, hub, azurite)
    env.env.update(
        {
            "CHAOS_HOOK_URL": hook.url,
            "CHAOS_FORWARD": hub.hub_connection_string("forward"),
            "AML_WORKER_LOG_LEVEL": "warning",
            "AML_WORKER_HTTP_PORT": str(free_port()),
        }
    )
    return env


# --- watching the worker from outside -------------------------------------------------------


@dataclass(slots=True)
class Probe:
    """One `/readyz` answer: when (monotonic), status (-1 = no answer) and problems."""

    at: float
    status: int
    problems: list[str] = field(default_factory=list)


class ReadinessWatch:
    """Polls `/readyz` every `period_s` from a thread, as a Kubernetes readiness probe does."""

    def __init__(self, port: int, period_s: float = 0.25) -> None:
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.period_s = period_s
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> Probe:
        at = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as reply:
                return Probe(at, reply.status)
        except urllib.error.HTTPError as exc:
            try:
                problems = json.loads(exc.read()).get("problems", [])
            except ValueError:
                problems = []
            return Probe(at, exc.code, problems)
        except OSError:
            return Probe(at, -1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probes.append(self._get())
            self._stop.wait(self.period_s)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start: float, end: float) -> list[Probe]:
        return [p for p in list(self.probes) if start <= p.at <= end]


def read_hub(connection_string: str) -> list[tuple[str, int, str, bytes, str]]:
    """Everything a hub holds now, read from the start by a fresh consumer: (partition,
    sequence number, offset, body, `aml-worker-idempotency-key` property or "")."""
    return asyncio.run(_read_hub(connection_string))


async def _read_hub(connection_string: str) -> list[tuple[str, int, str, bytes, str]]:
    from azure.eventhub.aio import EventHubConsumerClient

    # A consumer group of its own: the worker's epoch receivers own `$Default`.
    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="chaos-readback"
    )
    found: list[tuple[str, int, str, bytes, str]] = []
    async with client:
        ends = {}
        for pid in await client.get_partition_ids():
            props = await client.get_partition_properties(pid)
            if not props["is_empty"]:
                ends[pid] = props["last_enqueued_sequence_number"]
        seen = dict.fromkeys(ends, -1)
        done = asyncio.Event()

        async def on_batch(context: Any, events: list[Any]) -> None:
            for event in events:
                key = (event.properties or {}).get(b"aml-worker-idempotency-key", b"")
                body = b"".join(event.body)
                found.append(
                    (
                        context.partition_id,
                        event.sequence_number,
                        str(event.offset),
                        body,
                        key.decode() if isinstance(key, bytes) else str(key),
                    )
                )
                seen[context.partition_id] = event.sequence_number
            if all(seen[p] >= end for p, end in ends.items()):
                done.set()

        if ends:
            task = asyncio.ensure_future(
                client.receive_batch(
                    on_batch, starting_position="-1", max_batch_size=100, max_wait_time=1
                )
            )
            try:
                await asyncio.wait_for(done.wait(), 120)
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the experiment ---------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """What the experiment stops and starts: a name for the results and the two calls."""

    name: str
    stop: Callable[[], None]
    start: Callable[[], None]
    cause: str  # a word the readiness problem must contain


def run_outage(
    *,
    experiment: str,
    server: Server,
    outage_s: float,
    env: Env,
    hook: WebhookPeer,
    forward: ForwardReader,
    tmp_path: Path,
    publish_during_outage: bool,
) -> Figures:
    """Publish a known stream, stop `server` a third of the way in, keep it down for
    `outage_s`, start it again, and account for every expected action."""
    # The short forms hold events 2 s for reordering instead of 10 s: the same checks,
    # less waiting (the expected actions come from the same rules either way).
    rules = chaos_rules(tmp_path, grace="10s" if SOAK else "2s")
    stream = build_stream(
        rules, events=EVENTS, partitions=PARTITIONS, objects=EVENTS // 15, chunks=CHUNKS
    )
    pool = WorkerPool(env, rules)
    figures = Figures(experiment, "full" if SOAK else "short", partitions=PARTITIONS, workers="1")
    with timed() as elapsed, Publisher(env.dev_hub.hub_connection_string()) as publisher:
        worker = pool.start()
        port = int(env.env["AML_WORKER_HTTP_PORT"])
        with ReadinessWatch(port) as watch:
            wait_until(lambda: _ready(watch), 60, "the worker to become ready")
            before, after = stream.chunks[: CHUNKS // 3], stream.chunks[CHUNKS // 3 :]
            for chunk in before:
                publisher.send(chunk)
                time.sleep(0.1)
            wait_until(lambda: len(hook.first_deliveries()) > 0, 60, "the first webhook")
            steady_cpu = _cpu_rate(worker.process.pid, 2.0 if SOAK else 1.0)
            went_down, went_down_wall = time.monotonic(), time.time()
            server.stop()
            cpu_before = cpu_seconds(worker.process.pid)
            if publish_during_outage:
                publisher.start_paced(after, outage_s / len(after))
            time.sleep(outage_s)
            outage_cpu = (cpu_seconds(worker.process.pid) - cpu_before) / outage_s
            came_back = time.monotonic()
            server.start()
            if publish_during_outage:
                wait_until(lambda: publisher.done, 120, "the publisher")
            else:
                for chunk in after:
                    publisher.send(chunk)
            _wait_for_everything(stream, hook, forward, env, outage_s)
            settled = time.monotonic()
            time.sleep(0.5)  # a few more probes after everything arrived
        assert not pool.crashed(), "the worker exited during the experiment"
        assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
        assert pool.stop(worker) == 0, worker.log_path.read_text()[-3000:]
        figures.wall_time_s = elapsed()

    during = watch.between(went_down, came_back)
    not_ready = [p for p in during if p.status == 503]
    back = [p for p in watch.between(came_back, float("inf")) if p.status == 200]
    first = hook.first_deliveries()
    forwarded = forward.counts()
    hook_keys, forward_keys = stream.keys(HOOK_ACTION), stream.keys(FORWARD_ACTION)
    lost_hook = hook_keys - set(first)
    lost_forward = forward_keys - set(forwarded)
    unexpected = (set(first) - hook_keys) | (set(forwarded) - forward_keys)
    # Repeats are counted in what the forward hub holds (a fresh read at the end), not in
    # what the reader saw: a reader that reconnects may read a message twice.
    in_hub = Counter(key for *_, key in read_hub(env.dev_hub.hub_connection_string("forward")))
    ledger_repeats = sum(n - 1 for key, n in in_hub.items() if key in forward_keys)
    bad_order = order_violations(stream.order[HOOK_ACTION], hook.order_by_subject())
    max_lag, p99_lag = lag_figures(first, publisher.published, stream.event_of_key(HOOK_ACTION))
    figures.events = len({m.event_id for chunk in stream.chunks for m in chunk})
    figures.messages = stream.messages
    figures.expected_actions = {HOOK_ACTION: len(hook_keys), FORWARD_ACTION: len(forward_keys)}
    figures.lost = {HOOK_ACTION: len(lost_hook), FORWARD_ACTION: len(lost_forward)}
    figures.raw_repeats_webhook = hook.raw_repeats()
    figures.ledger_repeats = ledger_repeats
    figures.order_violations = len(bad_order)
    figures.objects_checked = len(stream.order[HOOK_ACTION])
    figures.stale_expected = stream.summary.get("stale", 0)
    figures.duplicates_expected = stream.summary.get("duplicate", 0)
    figures.max_lag_s, figures.p99_lag_s = max_lag, p99_lag
    answered = next(p.at for p in watch.probes if p.status != -1)  # once it listens
    silent = [p for p in watch.probes if p.status == -1 and p.at > answered]
    any_503 = [p.at for p in watch.probes if p.status == 503 and p.at >= went_down]
    # The lag before anything went wrong: what the machine manages without an outage.
    lag_before, _ = lag_figures(
        {k: d for k, d in first.items() if d.at < went_down_wall},
        publisher.published,
        stream.event_of_key(HOOK_ACTION),
    )
    back_wall = went_down_wall + (came_back - went_down)
    after_restart = [d.at - back_wall for d in first.values() if d.at > back_wall]
    acted_during = sum(
        went_down_wall <= d.at <= went_down_wall + (came_back - went_down) for d in first.values()
    )
    figures.extra = {
        "outage": server.name,
        "outage_s": outage_s,
        "max_lag_before_outage_s": lag_before,
        "published_during_outage": publish_during_outage,
        "not_ready_after_s": _since(went_down, not_ready),
        "ready_again_after_restart_s": _since(came_back, back),
        "first_not_ready_any_time_after_s": round(any_503[0] - went_down, 2) if any_503 else None,
        "webhook_keys_first_delivered_during_outage": acted_during,
        "first_webhook_after_restart_s": round(min(after_restart), 2) if after_restart else None,
        "not_ready_probes_during_outage": f"{len(not_ready)}/{len(during)}",
        "readiness_problems": sorted({q for p in not_ready for q in p.problems})[:6],
        "everything_delivered_after_restart_s": round(settled - came_back, 2),
        "worker_cpu_steady": round(steady_cpu, 3),
        "worker_cpu_during_outage": round(outage_cpu, 3),
        "stalled_reconnects": len(pool.log_events("partition_stalled_reconnecting")),
        "save_failures_logged": len(pool.log_events("save_failed")),
        "readyz_unanswered_at_s": [round(p.at - went_down, 1) for p in silent][:20],
        "forward_messages_in_hub": sum(in_hub.values()),
        "forward_reads_by_reader_beyond_one": sum(n - 1 for n in forwarded.values()),
    }
    write_result(figures, tmp_path)
    assert back and watch.probes[-1].status == 200, watch.probes[-3:]
    assert not silent, f"/readyz gave no answer within 5 s at {[p.at - went_down for p in silent]}"
    assert not lost_hook and not lost_forward, (sorted(lost_hook)[:5], sorted(lost_forward)[:5])
    assert not unexpected, sorted(unexpected)[:5]
    assert ledger_repeats == 0, "a ledger-protected forward was sent twice without any crash"
    assert not bad_order, list(bad_order.items())[:3]
    if outage_s >= READINESS_OUTAGE_S:
        flipped = any(server.cause in q for p in not_ready for q in p.problems)
        assert flipped, f"/readyz never said 503 naming the {server.cause}: {during[-3:]}"
    return figures


def _since(start: float, probes: list[Probe]) -> float | None:
    return round(probes[0].at - start, 2) if probes else None


def _ready(watch: ReadinessWatch) -> bool:
    return bool(watch.probes) and watch.probes[-1].status == 200


def _cpu_rate(pid: int, seconds: float) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / seconds


def _wait_for_everything(
    stream: Stream, hook: WebhookPeer, forward: ForwardReader, env: Env, outage_s: float
) -> None:
    hook_keys, forward_keys = stream.keys(HOOK_ACTION), stream.keys(FORWARD_ACTION)

    def arrived() -> bool:
        return hook_keys <= set(hook.first_deliveries()) and forward_keys <= set(forward.counts())

    try:
        wait_until(arrived, 120 + outage_s, "every expected action")
    except AssertionError:
        missing = len(hook_keys - set(hook.first_deliveries()))
        logs = "\n".join(w.log_path.read_text()[-3000:] for w in env.workers)
        raise AssertionError(f"{missing} webhook keys never arrived; worker log:\n{logs}") from None
    forward.caught_up()


# --- the tests --------------------------------------------------------------------------------


def test_storage_outage_mid_stream_loses_nothing(
    tmp_path: Path,
    chaos_hub: DevHubProcess,
    own_azurite: Azurite,
    webhook_peer: WebhookPeer,
    forward_reader: ForwardReader,
) -> None:
    """Azurite stops while events keep arriving: actions keep flowing (the webhook and the
    hub do not need storage), checkpoints, state and ledger writes fail and are retried,
    `/readyz` says the storage is away, and after the restart every save lands and nothing
    is lost or repeated."""
    env = chaos_environment(tmp_path, chaos_hub, own_azurite, webhook_peer)
    try:
        run_outage(
            experiment="soak_outage",
            server=Server("storage", own_azurite.stop, own_azurite.start, "storage"),
            outage_s=OUTAGE_S,
            env=env,
            hook=webhook_peer,
            forward=forward_reader,
            tmp_path=tmp_path,
            publish_during_outage=True,
        )
    finally:
        env.close()


def test_hub_restart_mid_stream_loses_nothing(
    tmp_path: Path,
    chaos_hub: DevHubProcess,
    azurite: Azurite,
    webhook_peer: WebhookPeer,
    forward_reader: ForwardReader,
) -> None:
    """dev-hub stops (with its data dir) and comes back on the same port: the worker's
    receivers reconnect, `/readyz` says the hub is away meanwhile, and the events published
    before and after the restart all cause their actions once."""
    env = chaos_environment(tmp_path, chaos_hub, azurite, webhook_peer)
    try:
        run_outage(
            experiment="soak_hub_restart",
            server=Server("hub", chaos_hub.stop, chaos_hub.start, "hub"),
            outage_s=OUTAGE_S,
            env=env,
            hook=webhook_peer,
            forward=forward_reader,
            tmp_path=tmp_path,
            publish_during_outage=False,
        )
    finally:
        env.close()
