"""`run` against hostile messages (issue 12, DESIGN §7), end to end on dev-hub and Azurite.

No input can stop a partition: what cannot be handled is dead-lettered with its Event Hubs
coordinates and the partition moves on; a message's dead letters cost one blob write
whatever its size; a dead letter that cannot be written holds the checkpoint back and is
counted, and the next run picks up from there.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from azure.storage.blob.aio import BlobLeaseClient, ContainerClient

from tests.conftest import TOPIC, eg
from tests.workers import Env

HUGE = "9" * 5000


def _rules(tmp_path: Path) -> Path:
    """Every event's id and subject go into a log line; `strict` needs `data.required`,
    so an event without it is a render error whose dead letter carries its subject."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
        "  - name: all\n"
        "    actions: [{type: log, message: '{{ event.id }} {{ event.subject }}'}]\n"
        "  - name: strict\n"
        "    actions: [{type: log, message: 'needs {{ data.required }}'}]\n"
    )
    return path


def _event(event_id: str, **fields: Any) -> dict[str, Any]:
    data = fields.pop("data", {"required": "yes"})
    return eg(event_id, subject=fields.pop("subject", f"runs/{event_id}"), data=data, **fields)


def _send(env: Env, tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / f"bodies-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env.send(path, "--partition-id", "0")  # one partition: sequence numbers are line numbers


def _dead_letter_list(env: Env) -> list[dict[str, Any]]:
    listed = env.cli("deadletter", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _prefix(env: Env) -> str:
    return f"127.0.0.1:{env.dev_hub.port}/aml-events/$default"


def test_hostile_messages_are_dead_lettered_and_the_partition_flows(env, tmp_path):
    bodies = [
        json.dumps(_event("huge", data={"n": "@N"})).replace('"@N"', HUGE),  # seq 0
        json.dumps(_event("leap-9999", time="9999-12-31T23:59:60Z")),  # seq 1
        json.dumps(_event("year-1-east", time="0001-01-01T00:00:00+01:00")),  # seq 2
        json.dumps(_event("surrogate", subject="\udc80", data={})),  # seq 3: a JSON escape
        "[" + ",".join(["1"] * 8000) + "]",  # seq 4: 8,000 bad elements
        json.dumps(_event("good")),  # seq 5
    ]
    assert "\\udc80" in bodies[3]
    _send(env, tmp_path, bodies)
    started = time.monotonic()
    worker = env.start(_rules(tmp_path), "--stop-when-idle", "2")
    assert worker.wait() == 0, worker.log_path.read_text()[-3000:]
    elapsed = time.monotonic() - started

    dispatched = Counter(line["message"] for line in worker.dispatched())
    assert dispatched["good runs/good"] == 1 and dispatched["needs yes"] == 1
    assert dispatched["surrogate \udc80"] == 1  # the JSON log line keeps it as its escape
    summary = worker.summary()
    assert summary["messages"] == 6 and summary["invalid"] == 8003
    assert summary["render_errors"] == 1  # `strict` on the event without data.required
    assert summary["dead_letters"] == 8004 and summary["dead_letter_write_failures"] == 0
    assert asyncio.run(env.checkpoints())["0"] == 5  # the checkpoint reached the end

    dead_blobs = [b for b in asyncio.run(env.blobs()) if "/deadletter/" in b]
    per_message = Counter(b.rsplit("/", 1)[-1].split("-", 1)[0] for b in dead_blobs)
    assert per_message == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1}  # one write per message
    assert elapsed < 60  # 8,000 one-by-one writes took ~108 s

    records = _dead_letter_list(env)
    assert len(records) == 8004
    by_seq = Counter(r["source"]["sequence_number"] for r in records)
    assert by_seq == {0: 1, 1: 1, 2: 1, 3: 1, 4: 8000}
    assert all(r["source"]["partition_id"] == "0" and r["source"]["offset"] for r in records)
    invalid = {r["source"]["sequence_number"]: r for r in records if r.get("index") is None}
    assert "digits" in invalid[0]["reason"] or "integer" in invalid[0]["reason"]
    assert {r["index"] for r in records if r["source"]["sequence_number"] == 4} == set(range(8000))
    (render,) = [r for r in records if r["kind"] == "render_error"]
    assert render["subject"] == "\udc80" and render["rule"] == "strict"

    table = env.cli("deadletter", "list")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 8005, table.stderr
    history = env.cli("history", "--event-id", "surrogate")
    assert history.returncode == 0 and "render_error" in history.stdout, history.stderr


async def _lease(env: Env, blob_name: str) -> Any:
    """Hold an infinite lease on a blob: writing it without the lease id fails (412)."""
    async with ContainerClient.from_connection_string(
        env.azurite.connection_string, env.container
    ) as container:
        if not await container.exists():
            await container.create_container()
        blob = container.get_blob_client(blob_name)
        await blob.upload_blob(b"{}", overwrite=True)
        lease = await blob.acquire_lease(lease_duration=-1)
        return lease.id


async def _break(env: Env, blob_name: str) -> None:
    async with ContainerClient.from_connection_string(
        env.azurite.connection_string, env.container
    ) as container:
        lease = BlobLeaseClient(container.get_blob_client(blob_name))
        await lease.break_lease(lease_break_period=0)


def test_an_unwritable_dead_letter_holds_the_checkpoint_and_the_next_run_resumes(env, tmp_path):
    """The dead letter of message 1 cannot be written (its blob is leased by someone else):
    the write is retried with backoff and counted, the checkpoint stays before message 1,
    and `--stop-when-idle` says so with a non-zero exit. Once storage accepts the write,
    the next run dead-letters it and reaches the end."""
    _send(env, tmp_path, [json.dumps(_event("g0")), "{not json", json.dumps(_event("g2"))])
    blocked = f"{_prefix(env)}/deadletter/0/1-body.json"
    asyncio.run(_lease(env, blocked))
    rules = _rules(tmp_path)
    first = env.start(rules, "--stop-when-idle", "2")
    first.wait_for(
        lambda: any(line["event"] == "dead_letter_write_failed" for line in first.lines())
    )
    port = next(line["port"] for line in first.lines() if line["event"] == "http_listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    (failures,) = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("aml_worker_dead_letter_write_failures_total ")
    ]
    assert failures >= 1
    assert first.wait() == 3
    text = first.log_path.read_text()
    assert "checkpoint did not reach the end" in text and "partition 0" in text
    assert "Traceback" not in text
    assert first.summary()["dead_letter_write_failures"] >= 1
    assert asyncio.run(env.checkpoints())["0"] < 1  # never past the unwritten dead letter
    assert "g2 runs/g2" not in {line["message"] for line in first.dispatched()}

    asyncio.run(_break(env, blocked))
    second = env.start(rules, "--stop-when-idle", "2")
    assert second.wait() == 0, second.log_path.read_text()[-3000:]
    assert asyncio.run(env.checkpoints())["0"] == 2
    messages = [line["message"] for line in first.dispatched() + second.dispatched()]
    assert {"g0 runs/g0", "g2 runs/g2"} <= set(messages)
    assert messages.count("g2 runs/g2") == 1
    (record,) = _dead_letter_list(env)
    assert record["kind"] == "invalid_body" and record["body"] == "{not json"
    assert record["source"]["sequence_number"] == 1


def test_whatever_raises_on_one_message_dead_letters_it_and_the_partition_flows(
    env, tmp_path, monkeypatch
):
    """The pipeline is built never to raise; the worker does not rely on it. A message the
    pipeline raises on is dead-lettered with its bytes and coordinates, and metrics that
    fail cost no event: the messages around it are dispatched, the checkpoint reaches the
    end. (In process, to make the pipeline and the metrics fail on purpose.)"""
    import base64

    from worker.consumer import run_worker
    from worker.health import Metrics
    from worker.pipeline import PartitionPipeline
    from worker.positions import parse_positions
    from worker.rules import load_rules
    from worker.settings import load_settings

    for name, value in env.env.items():
        if name.startswith("AML_WORKER_"):
            monkeypatch.setenv(name, value)
    feed = PartitionPipeline.feed

    def failing_feed(self: Any, body: bytes, origin: Any, now: Any = None) -> Any:
        if b'"boom"' in body:
            raise RuntimeError("boom")
        return feed(self, body, origin, now)

    def failing_step(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("metrics down")

    monkeypatch.setattr(PartitionPipeline, "feed", failing_feed)
    monkeypatch.setattr(Metrics, "step", failing_step)
    bodies = [json.dumps(_event(name)) for name in ("a", "boom", "b")]
    _send(env, tmp_path, bodies)
    rules = _rules(tmp_path)
    stats = asyncio.run(
        run_worker(
            load_settings(rules=str(rules)),
            load_rules(rules),
            parse_positions("earliest"),
            stop_when_idle=2,
        )
    )
    assert stats.actions == 4 and stats.action_failures == 0  # a and b, two rules each
    assert stats.dead_letters == 1 and stats.dead_letter_write_failures == 0
    assert not stats.behind and asyncio.run(env.checkpoints())["0"] == 2
    (record,) = _dead_letter_list(env)
    assert record["kind"] == "invalid_body" and "RuntimeError: boom" in record["reason"]
    assert record["source"]["partition_id"] == "0" and record["source"]["sequence_number"] == 1
    assert record["source"]["offset"] is not None
    assert base64.b64decode(record["body_base64"]).decode() == bodies[1]
