"""Raw SDK ceiling vs `aml-event-worker run`, on the same events from the same dev-hub.

    python bench/throughput.py [--quick] [--results DIR] [--events N] [--rounds R]

N bench events (run status changes over many runs, each object on one partition) are sent
once to a 4-partition dev-hub. Then, in alternating rounds, each in its own consumer group
from the first event received to the N-th:

- raw: the plain async `EventHubConsumerClient.receive_batch` (same batch size and prefetch
  as the worker), counting events and doing nothing else (in this process, which is idle
  meanwhile);
- ours: `aml-event-worker run` with twenty rules, each event matching one whose action is
  `log` at level info (stderr → /dev/null), default checkpoint interval and reorder grace.
  Its /metrics is polled every 100 ms; the last event counts as processed when every
  message was read and every action ran or is held for reordering (the grace tail is
  latency, not throughput).

Then (not with --quick) the server's own ceiling: two raw consumers at once; when
their sum is not above one consumer's rate and dev-hub's CPU is near one core during the
raw rounds, dev-hub is the bottleneck, and the ratio compares ours with what this server
can give. CPU seconds of dev-hub and of each consumer are recorded per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RESULTS,
    ROOT,
    WORKER,
    Azurite,
    DevHub,
    bench_rules,
    cpu_seconds,
    metrics,
    send_bodies,
    stream,
    worker_env,
    write_result,
)

PARTITIONS = 4
BATCH = 300  # max_batch_size and prefetch, as worker/consumer.py uses
POLL_S = 0.1


# --- raw ---------------------------------------------------------------------------------------


async def raw_receive(
    connection_string: str,
    consumer_group: str,
    count: int,
    timeout_s: float,
    start_at: float,
    hub_pid: int,
) -> dict[str, Any]:
    """Receive `count` events with the bare SDK; times from the first batch to the last.
    Receiving begins at `start_at` (monotonic clock, shared by processes on Linux), so that
    concurrent receivers overlap. dev-hub's CPU time is read at the same two moments."""
    from azure.eventhub.aio import EventHubConsumerClient

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group=consumer_group
    )
    received = 0
    first_batch = 0
    first = last = 0.0
    cpu_first = cpu_last = hub_first = hub_last = 0.0
    done = asyncio.Event()

    async def on_batch(_context: Any, events: list[Any]) -> None:
        nonlocal received, first_batch, first, last, cpu_first, cpu_last, hub_first, hub_last
        if not events:
            return
        now = time.monotonic()
        if not received:
            first, cpu_first, first_batch = now, time.process_time(), len(events)
            hub_first = cpu_seconds(hub_pid)
        received += len(events)
        last, cpu_last, hub_last = now, time.process_time(), cpu_seconds(hub_pid)
        if received >= count:
            done.set()

    async with client:
        task = asyncio.ensure_future(
            client.receive_batch(
                on_batch,
                max_batch_size=BATCH,
                prefetch=BATCH,
                max_wait_time=1.0,
                starting_position="-1",
            )
        )
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        finally:
            task.cancel()
    seconds = last - first
    return {
        "events": received,
        "first_monotonic": first,
        "last_monotonic": last,
        "seconds": round(seconds, 3),
        "events_per_second": round((received - first_batch) / seconds) if seconds else None,
        "cpu_seconds": round(cpu_last - cpu_first, 3),
        "dev_hub_cpu_seconds": round(hub_last - hub_first, 3),
        "dev_hub_first_cpu": hub_first,
        "dev_hub_last_cpu": hub_last,
    }


def raw_process(
    hub: DevHub, group: str, count: int, start_at: float = 0.0
) -> tuple[subprocess.Popen[str], float]:
    """A raw receiver in its own process (as the worker is), answering JSON on stdout;
    with the moment it was spawned."""
    spawned = time.monotonic()
    process = subprocess.Popen(
        [
            *(sys.executable, __file__, "--raw", hub.connection_string, group),
            *(str(count), str(start_at), str(hub.pid)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, spawned


def raw_result(started: tuple[subprocess.Popen[str], float], timeout_s: float) -> dict[str, Any]:
    process, spawned = started
    out, _ = process.communicate(timeout=timeout_s)
    if process.returncode != 0:
        raise RuntimeError(f"raw receiver failed ({process.returncode})")
    result = json.loads(out)
    result["until_first_event_s"] = round(result["first_monotonic"] - spawned, 2)
    result["process_seconds"] = round(time.monotonic() - spawned, 2)
    return result


def raw_in_process(hub: DevHub, group: str, count: int) -> dict[str, Any]:
    """A raw round in this process: it is idle otherwise, and already has the SDK loaded."""
    spawned = time.monotonic()
    result = asyncio.run(raw_receive(hub.connection_string, group, count, 600, 0.0, hub.pid))
    result["until_first_event_s"] = round(result["first_monotonic"] - spawned, 2)
    result["process_seconds"] = round(time.monotonic() - spawned, 2)
    return result


# --- ours --------------------------------------------------------------------------------------


def run_worker(
    hub: DevHub,
    azurite: Azurite,
    rules: Path,
    count: int,
    tmp: Path,
    timeout_s: float,
    idle_s: float,
) -> dict[str, Any]:
    """`aml-event-worker run --stop-when-idle` over the backlog; rate from /metrics polls."""
    group = f"ours-{uuid.uuid4().hex[:6]}"
    env = worker_env(hub, azurite, f"t{uuid.uuid4().hex[:10]}", AML_WORKER_CONSUMER_GROUP=group)
    port = int(env["AML_WORKER_HTTP_PORT"])
    summary_path = tmp / f"{group}.summary.json"
    spawned = time.monotonic()
    process = subprocess.Popen(
        [
            *WORKER,
            "run",
            "--rules",
            str(rules),
            "--stop-when-idle",
            str(idle_s),
            "--summary-json",
            str(summary_path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # (time, messages read, actions done, events held, worker CPU s, dev-hub CPU s)
    series: list[tuple[float, float, float, float, float, float]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not finish {count} events in {timeout_s}s")
            try:
                figures = metrics(port)
            except OSError:  # not listening yet
                time.sleep(POLL_S)
                continue
            now = time.monotonic()
            series.append(
                (
                    now,
                    figures.get("aml_worker_messages_total", 0.0),
                    figures.get("actions_done", 0.0),
                    figures.get("aml_worker_held_events", 0.0),
                    cpu_seconds(process.pid),
                    cpu_seconds(hub.pid),
                )
            )
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    if process.returncode != 0:
        raise RuntimeError(f"aml-event-worker run exited {process.returncode}")
    summary = json.loads(summary_path.read_text())
    actions = summary["actions_dispatched"]
    started = next((s for s in series if s[1] > 0), None)
    finished = next((s for s in series if s[1] >= count and s[2] + s[3] >= actions), None)
    if started is None or finished is None or finished[0] <= started[0]:
        raise RuntimeError("the metrics polls did not see the run from first to last event")
    seconds = finished[0] - started[0]
    return {
        "events": summary["messages"],
        "actions_dispatched": actions,
        "summary": summary,
        "seconds": round(seconds, 3),
        "events_per_second": round((count - started[1]) / seconds),
        "cpu_seconds": round(finished[4] - started[4], 3),
        "core_share": round((finished[4] - started[4]) / seconds, 2),
        "until_first_event_s": round(started[0] - spawned, 2),
        "process_seconds": round(time.monotonic() - spawned, 2),
        "dev_hub_cpu_seconds": round(finished[5] - started[5], 3),
        "polls": len(series),
    }


# --- the bench ---------------------------------------------------------------------------------


def server_figures(raw_rounds: list[dict[str, Any]], both: list[dict[str, Any]]) -> dict[str, Any]:
    """Is dev-hub the bottleneck? Only when it is busy near a whole core while serving one
    consumer, and a second consumer at once adds (almost) nothing to what it delivers."""
    raw_rate = statistics.median(r["events_per_second"] for r in raw_rounds)
    hub_share = statistics.median(
        r["dev_hub_cpu_seconds"] / r["seconds"] for r in raw_rounds if r["seconds"]
    )
    figures: dict[str, Any] = {"core_share_during_raw": round(hub_share, 2)}
    if both:
        span = max(r["last_monotonic"] for r in both) - min(r["first_monotonic"] for r in both)
        cpu = max(r["dev_hub_last_cpu"] for r in both) - min(r["dev_hub_first_cpu"] for r in both)
        pair_rate = round(sum(r["events"] for r in both) / span)
        figures["two_consumers_events_per_second"] = pair_rate
        figures["two_consumers_dev_hub_core_share"] = round(cpu / span, 2)
        figures["is_bottleneck"] = hub_share >= 0.85 and pair_rate < 1.15 * raw_rate
    else:
        figures["is_bottleneck"] = hub_share >= 0.85
    return figures


def measure(
    count: int, rounds: int, *, idle_s: float, pair_delay_s: float | None
) -> dict[str, Any]:
    """The rounds, then (unless `pair_delay_s` is None) two raw consumers at once."""
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        rules = bench_rules(tmp / "rules.yaml")
        with Azurite() as azurite, DevHub(partitions=PARTITIONS) as hub:
            started = time.monotonic()
            sent = asyncio.run(send_bodies(hub.connection_string, stream(count, PARTITIONS)))
            send_seconds = time.monotonic() - started
            if sent != count:
                raise RuntimeError(f"sent {sent} of {count} events")
            timeout_s = 60 + count / 100
            raw_rounds, our_rounds = [], []
            for number in range(rounds):
                raw_rounds.append(raw_in_process(hub, f"raw-{number}", count))
                our_rounds.append(run_worker(hub, azurite, rules, count, tmp, timeout_s, idle_s))
            both = []
            if pair_delay_s is not None:
                # The server's ceiling: two raw consumers at once, starting together.
                start_at = time.monotonic() + pair_delay_s  # both have imported the SDK then
                pair = [raw_process(hub, f"pair-{i}", count, start_at) for i in range(2)]
                both = [raw_result(p, 600) for p in pair]
    dev_hub = server_figures(raw_rounds, both)
    for record in (*raw_rounds, *both):
        record["dev_hub_core_share"] = round(record["dev_hub_cpu_seconds"] / record["seconds"], 2)
        record["consumer_core_share"] = round(record["cpu_seconds"] / record["seconds"], 2)
        for key in ("first_monotonic", "last_monotonic", "dev_hub_first_cpu", "dev_hub_last_cpu"):
            record.pop(key)
    raw_rate = statistics.median(r["events_per_second"] for r in raw_rounds)
    our_rate = statistics.median(r["events_per_second"] for r in our_rounds)
    return {
        "events": count,
        "partitions": PARTITIONS,
        "rules": 20,
        "action": "log (level info, stderr to /dev/null), every event matches one rule",
        "send_seconds": round(send_seconds, 2),
        "raw_events_per_second": raw_rate,
        "ours_events_per_second": our_rate,
        "ours_vs_raw": round(our_rate / raw_rate, 3),
        "goal_ours_vs_raw": 0.9,
        "raw_cpu_us_per_event": round(
            statistics.median(1e6 * r["cpu_seconds"] / r["events"] for r in raw_rounds)
        ),
        "ours_cpu_us_per_event": round(
            statistics.median(1e6 * r["cpu_seconds"] / r["events"] for r in our_rounds)
        ),
        "dev_hub": dev_hub,
        "raw_rounds": raw_rounds,
        "ours_rounds": our_rounds,
        "two_consumers": both,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast form (tests)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--events", type=int, help="events per round (default 30000, quick 3000)")
    parser.add_argument("--rounds", type=int, help="raw/ours rounds (default 3, quick 1)")
    parser.add_argument("--raw", nargs=5, help=argparse.SUPPRESS)  # CS GROUP N START_AT PID
    args = parser.parse_args(argv)
    if args.raw:
        connection_string, group, count, start_at, hub_pid = args.raw
        result = asyncio.run(
            raw_receive(connection_string, group, int(count), 600, float(start_at), int(hub_pid))
        )
        print(json.dumps(result))
        return 0
    count = args.events or (3000 if args.quick else 30_000)
    rounds = args.rounds or (1 if args.quick else 3)
    figures = measure(
        count,
        rounds,
        idle_s=1.0 if args.quick else 2.0,
        pair_delay_s=None if args.quick else 3.0,  # quick: no server-ceiling pair
    )
    path = write_result(args.results, "throughput", {"quick": args.quick, **figures})
    hub = figures["dev_hub"]
    pair = hub.get("two_consumers_events_per_second")
    print(
        f"throughput: raw {figures['raw_events_per_second']}/s, ours "
        f"{figures['ours_events_per_second']}/s ({figures['ours_vs_raw']:.0%}); dev-hub "
        f"{hub['core_share_during_raw']:.0%} of a core"
        + (f", two consumers {pair}/s" if pair else "")
        + f" → {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
