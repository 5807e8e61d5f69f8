"""Blob writes per partition per minute at a trickle and under full load (DESIGN §5).

    python bench/checkpoints.py [--quick] [--results DIR] [--window SECONDS]

One `aml-event-worker run` (default settings: checkpoint interval 5 s, load balancing 10 s)
consumes a 4-partition dev-hub while a paced producer sends bench events at 10 events/s,
then at 5,000 events/s, for one window each. The figure is what the storage server saw:
Azurite's request log, sliced at the window edges, counted per blob and partition —

- `writes`: checkpoint updates (`…/checkpoint/<p>`) + state commits (`…/state/<p>`, Put
  Block List): the writes DESIGN §5 bounds at ≤ 2 per interval (≤ 24/min at 5 s);
- `requests`: every PUT on the partition's blobs, also the Put Block that stages a state
  save's data before its commit (so 3 requests per save);
- ownership renewals (the SDK's load balancing) are counted apart.

When the worker cannot keep up with the offered 5,000/s on this machine, it reads as fast
as it can for the whole window (its backlog grows): the rate it consumed is recorded.
`--quick` uses a 1 s checkpoint interval and short windows; the bound scales with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RESULTS,
    ROOT,
    WORKER,
    Azurite,
    DevHub,
    bench_event,
    bench_rules,
    metrics,
    partition_of,
    worker_env,
    write_result,
)

PARTITIONS = 4
RATES = (10, 5000)
REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
BLOB = re.compile(r"/(?P<kind>checkpoint|state|ownership|ledger)/(?P<partition>[^/?]+)$")


def count_writes(log_text: str, container: str) -> dict[str, Counter[str]]:
    """Successful PUT requests of one container, by kind then partition."""
    counts: dict[str, Counter[str]] = {
        kind: Counter() for kind in ("checkpoint", "state_commit", "state_block", "ownership")
    }
    prefix = f"/devstoreaccount1/{container}/"
    for match in REQUEST.finditer(log_text):
        if match["method"] != "PUT" or not match["status"].startswith("2"):
            continue
        path, _, query = match["path"].partition("?")
        path = unquote(path)
        if not path.startswith(prefix):
            continue
        blob = BLOB.search(path)
        if blob is None:
            continue
        kind, partition = blob["kind"], blob["partition"]
        if kind == "state":
            kind = "state_commit" if "comp=blocklist" in query else "state_block"
        if kind in counts:
            counts[kind][partition] += 1
    return counts


async def paced_send(connection_string: str, rate: int, seconds: float, first: int) -> int:
    """Send `rate` events/s for `seconds`, in 20 ticks a second; returns how many were sent.
    Behind schedule (a slow machine) it sends what is due at once, never skips."""
    from datetime import UTC, datetime

    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubProducerClient

    start_time = datetime(2026, 3, 2, tzinfo=UTC)
    producer = EventHubProducerClient.from_connection_string(connection_string)
    sent = 0
    async with producer:
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < seconds:
            due = int(rate * min(elapsed + 0.05, seconds)) - sent
            by_partition: dict[str, list[bytes]] = {}
            for number in range(first + sent, first + sent + due):
                event = bench_event(number, start_time)
                body = json.dumps(event).encode()
                by_partition.setdefault(partition_of(event["subject"], PARTITIONS), []).append(body)
            for partition, bodies in by_partition.items():
                batch = await producer.create_batch(partition_id=partition)
                for body in bodies:
                    try:
                        batch.add(EventData(body))
                    except ValueError:  # full
                        await producer.send_batch(batch)
                        batch = await producer.create_batch(partition_id=partition)
                        batch.add(EventData(body))
                await producer.send_batch(batch)
            sent += due
            await asyncio.sleep(max(0.0, began + (sent / rate) - time.monotonic()))
    return sent


def wait_owned(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the worker exited early ({process.returncode}):\n{tail}")
        with contextlib.suppress(OSError):
            if metrics(port).get("aml_worker_owned_partitions", 0) >= PARTITIONS:
                return
        time.sleep(0.2)
    raise RuntimeError("the worker did not own every partition in time")


def measure(window_s: float, interval_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as tmp_name:
        tmp = Path(tmp_name)
        access_log = tmp / "azurite-access.log"
        rules = bench_rules(tmp / "rules.yaml")
        container = f"k{uuid.uuid4().hex[:10]}"
        with Azurite(access_log) as azurite, DevHub(partitions=PARTITIONS) as hub:
            env = worker_env(
                hub,
                azurite,
                container,
                AML_WORKER_CHECKPOINT_INTERVAL=str(interval_s),
                AML_WORKER_LOAD_BALANCING_INTERVAL="10",
                AML_WORKER_OWNERSHIP_EXPIRY="60",
                # Writes do not depend on logging; warnings only keep the log file small.
                AML_WORKER_LOG_LEVEL="warning",
            )
            port = int(env["AML_WORKER_HTTP_PORT"])
            worker_log = tmp / "worker.log"
            with open(worker_log, "wb") as stderr:
                process = subprocess.Popen(
                    [*WORKER, "run", "--rules", str(rules)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            phases = []
            try:
                wait_owned(port, process, worker_log)
                asyncio.run(paced_send(hub.connection_string, 10, 2 * interval_s, 0))
                first = 10_000_000
                for rate in RATES:
                    before = metrics(port)
                    offset = access_log.stat().st_size
                    began = time.monotonic()
                    sent = asyncio.run(paced_send(hub.connection_string, rate, window_s, first))
                    seconds = time.monotonic() - began
                    after = metrics(port)
                    text = access_log.read_bytes()[offset:].decode("utf-8", "replace")
                    phases.append(
                        phase_figures(
                            rate,
                            sent,
                            seconds,
                            before,
                            after,
                            count_writes(text, container),
                            interval_s,
                        )
                    )
                    first += sent
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
    return {
        "partitions": PARTITIONS,
        "checkpoint_interval_s": interval_s,
        "bound_writes_per_partition_per_minute": round(2 * 60 / interval_s, 1),
        "window_s": window_s,
        "phases": phases,
    }


def phase_figures(
    rate: int,
    sent: int,
    seconds: float,
    before: dict[str, float],
    after: dict[str, float],
    counts: dict[str, Counter[str]],
    interval_s: float,
) -> dict[str, Any]:
    minutes = seconds / 60
    partitions = [str(p) for p in range(PARTITIONS)]
    per_partition = {}
    for p in partitions:
        writes = counts["checkpoint"][p] + counts["state_commit"][p]
        requests = writes + counts["state_block"][p]
        per_partition[p] = {
            "checkpoint_writes": counts["checkpoint"][p],
            "state_commits": counts["state_commit"][p],
            "state_blocks_staged": counts["state_block"][p],
            "ownership_writes": counts["ownership"][p],
            "writes_per_minute": round(writes / minutes, 1),
            "requests_per_minute": round(requests / minutes, 1),
        }
    consumed = after.get("aml_worker_messages_total", 0) - before.get(
        "aml_worker_messages_total", 0
    )
    # At most one save per interval, plus one at a window edge.
    most = 2 * (int(seconds / interval_s) + 1)
    return {
        "offered_events_per_second": rate,
        "sent_events_per_second": round(sent / seconds, 1),
        "consumed_events_per_second": round(consumed / seconds, 1),
        "seconds": round(seconds, 2),
        "max_writes_per_partition_per_minute": max(
            v["writes_per_minute"] for v in per_partition.values()
        ),
        "max_requests_per_partition_per_minute": max(
            v["requests_per_minute"] for v in per_partition.values()
        ),
        "max_writes_per_partition_in_window": max(
            counts["checkpoint"][p] + counts["state_commit"][p] for p in partitions
        ),
        "bound_writes_per_partition_in_window": most,
        "worker_checkpoint_metric": after.get("aml_worker_checkpoint_writes_total", 0)
        - before.get("aml_worker_checkpoint_writes_total", 0),
        "per_partition": per_partition,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast form (tests)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--window", type=float, help="seconds per rate (default 60, quick 5)")
    args = parser.parse_args(argv)
    window = args.window or (5.0 if args.quick else 60.0)
    interval = 1.0 if args.quick else 5.0
    figures = measure(window, interval)
    path = write_result(args.results, "checkpoints", {"quick": args.quick, **figures})
    for phase in figures["phases"]:
        print(
            f"checkpoints: offered {phase['offered_events_per_second']}/s, consumed "
            f"{phase['consumed_events_per_second']}/s: ≤ "
            f"{phase['max_writes_per_partition_per_minute']} writes "
            f"({phase['max_requests_per_partition_per_minute']} requests) per partition per "
            f"minute (bound {figures['bound_writes_per_partition_per_minute']})"
        )
    print(f"checkpoints → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
