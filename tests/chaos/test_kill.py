"""Kill loop (issue 7): workers SIGKILLed at random moments mid-stream, restarted each time.

A known stream (run status changes, reordered within and beyond the grace window, with
redeliveries) is published chunk by chunk over 8 partitions while 2-3 workers consume it
and, at random moments, one of them is SIGKILLed and replaced. At the end:

- nothing is lost: every key the pure pipeline plans (a dry-run replay of each
  partition's arrival order) reached the webhook peer and the `forward` hub, and nothing
  else did (the live workers decided exactly what the replay decided);
- the webhook (idempotent target) saw each key's effect once: the peer dedupes by
  `Idempotency-Key` and counts first deliveries; the raw repeats it absorbed are reported;
- the ledger-protected `eventhub` forward repeated only keys that were accepted by the hub
  but not yet in the ledger when a kill hit (the window is measured at every kill);
- each object's events were first delivered in sequencer order.

Short form (make test): 600 events, 1 kill. `make soak`: 20 000 events, 50 kills.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from tests.chaos.harness import (
    HOOK_ACTION,
    SOAK,
    Experiment,
    Publisher,
    WorkerPool,
    build_stream,
    chaos_rules,
    order_violations,
    wait_until,
    write_result,
)

if SOAK:
    EVENTS, KILLS, WORKERS, CHUNKS, GAP_S = 20_000, 50, 3, 50, (2.0, 7.0)
else:
    EVENTS, KILLS, WORKERS, CHUNKS, GAP_S = 600, 1, 2, 3, (2.0, 3.0)


def test_the_stream_exercises_dedupe_reordering_and_staleness(tmp_path):
    """The harness's stream is not trivially ordered, and its order check can fail: the
    expected plan has duplicates, stale events and objects that need reordering, and a
    swapped pair of first deliveries is reported."""
    stream = build_stream(chaos_rules(tmp_path), events=600, chunks=3, objects=60)
    assert stream.summary["duplicate"] > 0
    assert stream.summary["stale"] > 0
    assert stream.reordered_objects > 0
    assert stream.summary["matched"] == len(stream.keys(HOOK_ACTION))
    expected = stream.order[HOOK_ACTION]
    subject = next(s for s, keys in expected.items() if len(keys) >= 2)
    assert order_violations(expected, expected) == {}
    swapped = {**expected, subject: [expected[subject][1], expected[subject][0]]}
    assert list(order_violations(expected, swapped)) == [subject]
    partial = {**expected, subject: expected[subject][1:]}  # a lost key is not disorder
    assert order_violations(expected, partial) == {}


def test_sigkill_at_random_moments_loses_nothing_and_repeats_only_in_the_window(
    tmp_path, chaos_env, chaos_hub, webhook_peer, forward_reader
):
    """Every planned action arrives, webhook effects once, ledger repeats only from kill
    windows, per-object order kept, across repeated SIGKILLs of random workers."""
    rng = random.Random(11)
    rules = chaos_rules(tmp_path)
    stream = build_stream(rules, events=EVENTS, chunks=CHUNKS, objects=400 if SOAK else 60)
    pool = WorkerPool(chaos_env, rules)
    with Publisher(chaos_hub.hub_connection_string()) as publisher:
        experiment = Experiment(
            "soak_kill",
            env=chaos_env,
            stream=stream,
            pool=pool,
            peer=webhook_peer,
            forward=forward_reader,
            publisher=publisher,
        )
        for _ in range(WORKERS):
            pool.start()
        pool.wait_owned(stream.partitions)
        # Spread the stream over the kill phase, so kills land mid-stream.
        interval_s = KILLS * sum(GAP_S) / 2 / CHUNKS
        publisher.start_paced(stream.chunks, interval_s)
        for _ in range(KILLS):
            time.sleep(rng.uniform(*GAP_S))
            experiment.kill_and_restart(None, rng)
        figures = experiment.finish(timeout_s=600 if SOAK else 90)
    figures.workers = f"{WORKERS} at a time, {pool.started} processes in all"
    write_result(figures, tmp_path)
    assert figures.kills == KILLS
    assert experiment.failures(figures) == []


def _restored_pending(worker: Any) -> dict[str, int]:
    """Partition → `restored_pending` of each `partition_started` the worker logged."""
    return {
        str(line["partition_id"]): int(line.get("restored_pending") or 0)
        for line in worker.lines()
        if line.get("event") == "partition_started"
    }


async def _last_state_pending(env: Any, partition: str) -> tuple[str, int]:
    """(kind, number of pending events) of the last record of a partition's state blob."""
    from azure.storage.blob.aio import ContainerClient

    from worker.state import decode_records

    container = ContainerClient.from_connection_string(env.azurite.connection_string, env.container)
    async with container:
        names = [
            b.name async for b in container.list_blobs() if b.name.endswith(f"/state/{partition}")
        ]
        data = await (await container.download_blob(names[0])).readall()
    last = list(decode_records(data))[-1]
    return last.get("kind", ""), len(last.get("pending", []))


@pytest.mark.skipif(not SOAK, reason="about 40 s: runs in `make soak`")
def test_a_crash_right_after_a_restart_keeps_the_restored_pending_actions(
    tmp_path, chaos_env, chaos_hub, webhook_peer, forward_reader
):
    """Worker A dies with actions in flight; B restores them as `pending` and dies at once;
    C must still run them. B's start snapshot has to list them as pending (it once did not:
    C then dropped their re-read copies as duplicates and nobody ran them)."""
    rules = chaos_rules(tmp_path)
    stream = build_stream(
        rules, events=96, chunks=1, objects=16, duplicate_rate=0, reorder_rate=0, stale_rate=0
    )
    webhook_peer.respond = lambda number, key: 0.5  # a slow target: actions stay in flight
    pool = WorkerPool(chaos_env, rules)
    with Publisher(chaos_hub.hub_connection_string()) as publisher:
        experiment = Experiment(
            "restart_crash",
            env=chaos_env,
            stream=stream,
            pool=pool,
            peer=webhook_peer,
            forward=forward_reader,
            publisher=publisher,
        )
        first = pool.start()
        pool.wait_owned(stream.partitions)
        publisher.send(stream.chunks[0])
        wait_until(lambda: len(webhook_peer.snapshot()) >= 16, 60, "the first deliveries")
        time.sleep(1.0)  # A saves its in-flight events as `pending`
        pool.kill(first)
        second = pool.start()
        wait_until(
            lambda: any(_restored_pending(second).values()), 60, "B to restore pending events"
        )
        pool.kill(second)  # before B's next periodic save
        restored = {p: n for p, n in _restored_pending(second).items() if n}
        partition = next(iter(restored))
        kind, pending = asyncio.run(_last_state_pending(chaos_env, partition))
        webhook_peer.respond = None
        pool.start()
        figures = experiment.finish(timeout_s=120)
    figures.extra["restored_pending_by_b"] = restored
    figures.extra["state_after_b"] = {"partition": partition, "kind": kind, "pending": pending}
    write_result(figures, tmp_path, publish=False)
    # B's start snapshot must list what it restored as pending, or C would drop them.
    assert not (kind == "snapshot" and pending == 0), (restored, kind, pending)
    assert experiment.failures(figures) == []
