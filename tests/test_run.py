"""`run` end to end: real SDK clients, dev-hub and Azurite, worker processes killed and restarted.

The worker runs as a child process exactly as users run it; its JSON log lines are the
record of what it dispatched (`action_log` carries partition, sequence number and key).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from tests.conftest import TOPIC, eg

RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"


def rules_file(tmp_path: Path, *, grace: str = "0s", action: str = "log") -> Path:
    path = tmp_path / f"rules-{uuid.uuid4().hex[:6]}.yaml"
    actions = {
        "log": "[{type: log, message: '{{ event.id }}'}]",
        "webhook": "[{type: webhook, url: 'https://example.invalid/x'}]",
    }[action]
    path.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: {grace}}}\n"
        f"rules:\n  - name: all\n    actions: {actions}\n"
    )
    return path


def stream(path: Path, count: int, *, subjects: int = 40, start: int = 0, poison: int = 0) -> Path:
    """`count` events over `subjects` objects, in time order per object; some poison lines."""
    lines = []
    for i in range(start, start + count):
        seconds = i
        lines.append(
            json.dumps(
                eg(
                    f"ev-{i}",
                    subject=f"experiments/e/runs/r{i % subjects}",
                    time=f"2024-06-10T{10 + seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
                    f"{seconds % 60:02d}Z",
                    data={"runStatus": "Running"},
                )
            )
        )
    lines += ["{not json"] * poison
    path.write_text("\n".join(lines) + "\n")
    return path


class Env:
    """One hub + one container + settings shared by the workers of a test."""

    def __init__(self, tmp_path: Path, dev_hub: Any, azurite: Any) -> None:
        self.tmp_path = tmp_path
        self.dev_hub = dev_hub
        self.azurite = azurite
        self.container = f"c{uuid.uuid4().hex[:12]}"
        self.env = {
            **os.environ,
            "AML_WORKER_EVENTHUB_CONNECTION_STRING": dev_hub.hub_connection_string(),
            "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING": azurite.connection_string,
            "AML_WORKER_CHECKPOINT_CONTAINER": self.container,
            "AML_WORKER_CREATE_CONTAINER": "true",
            "AML_WORKER_LOAD_BALANCING_INTERVAL": "1",
            "AML_WORKER_OWNERSHIP_EXPIRY": "3",
            "AML_WORKER_CHECKPOINT_INTERVAL": "0.3",
            "AML_WORKER_SHUTDOWN_TIMEOUT": "5",
            "AML_WORKER_LOG_FORMAT": "json",
            "AML_WORKER_LOG_LEVEL": "info",
        }

    def send(self, path: Path, *extra: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "worker", "send", str(path), *extra],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("sent ")

    def start(self, rules: Path, *args: str, name: str = "w") -> Worker:
        return Worker(self, rules, list(args), self.tmp_path / f"{name}-{uuid.uuid4().hex[:6]}")

    async def checkpoints(self) -> dict[str, int]:
        store = BlobCheckpointStore.from_connection_string(
            self.azurite.connection_string, self.container
        )
        async with store:
            ns = f"127.0.0.1:{self.dev_hub.port}"
            found = await store.list_checkpoints(ns, "aml-events", "$default")
            if not found:
                found = await store.list_checkpoints("127.0.0.1", "aml-events", "$default")
        return {c["partition_id"]: int(c["sequence_number"]) for c in found}

    async def owners(self) -> list[str]:
        store = BlobCheckpointStore.from_connection_string(
            self.azurite.connection_string, self.container
        )
        async with store:
            ns = f"127.0.0.1:{self.dev_hub.port}"
            return [o["owner_id"] for o in await store.list_ownership(ns, "aml-events", "$default")]

    async def blobs(self) -> list[str]:
        container = ContainerClient.from_connection_string(
            self.azurite.connection_string, self.container
        )
        async with container:
            return [b.name async for b in container.list_blobs()]


class Worker:
    """A worker process with its log written to a file."""

    def __init__(self, env: Env, rules: Path, args: list[str], base: Path) -> None:
        self.log_path = base.with_suffix(".log")
        self.summary_path = base.with_suffix(".summary.json")
        self.handle = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker",
                "run",
                "--rules",
                str(rules),
                "--summary-json",
                str(self.summary_path),
                *args,
            ],
            env=env.env,
            stdout=subprocess.DEVNULL,
            stderr=self.handle,
        )

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.handle.close()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait()

    def lines(self) -> list[dict[str, Any]]:
        result = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                result.append(json.loads(line))
        return result

    def dispatched(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == "action_log"]

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def wait_for(self, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out:\n{self.log_path.read_text()[-3000:]}")


@pytest.fixture
def env(tmp_path, dev_hub, azurite) -> Env:
    return Env(tmp_path, dev_hub, azurite)


def test_run_dispatches_every_event_once_and_checkpoints_to_the_end(env, tmp_path):
    """Poison bodies are dead-lettered with their coordinates; every good event acts once."""
    env.send(stream(tmp_path / "s.jsonl", 400, poison=3))
    worker = env.start(rules_file(tmp_path), "--stop-when-idle", "2")
    assert worker.wait() == 0, worker.log_path.read_text()[-2000:]
    keys = Counter(line["idempotency_key"] for line in worker.dispatched())
    assert len(keys) == 400 and set(keys.values()) == {1}
    summary = worker.summary()
    assert summary["messages"] == 403 and summary["matched"] == 400 and summary["invalid"] == 3
    assert summary["dead_letters"] == 3
    checkpoints = asyncio.run(env.checkpoints())
    assert len(checkpoints) == 4
    assert sum(seq + 1 for seq in checkpoints.values()) == 403  # every message covered
    blobs = asyncio.run(env.blobs())
    dead = [b for b in blobs if "/deadletter/" in b]
    assert len(dead) == 3 and all(b.endswith("-body.json") for b in dead)
    assert sum("/state/" in b for b in blobs) == 4
    listed = subprocess.run(
        [sys.executable, "-m", "worker", "deadletter", "list", "--json"],
        env=env.env,
        capture_output=True,
        text=True,
        check=True,
    )
    records = json.loads(listed.stdout)
    assert [r["kind"] for r in records] == ["invalid_body"] * 3
    assert all(r["source"]["sequence_number"] is not None for r in records)
    assert all(r["body"] == "{not json" for r in records)
    table = subprocess.run(
        [sys.executable, "-m", "worker", "deadletter", "list"],
        env=env.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert table[0].split()[:3] == ["when", "partition", "seq"] and len(table) == 4
    assert any(line["event"] == "no_checkpoint_start" for line in worker.lines())


def test_restart_reads_only_new_messages_and_dedupes_across_restarts(env, tmp_path):
    """The demo's second run: the same sample again is all duplicates, nothing dispatched."""
    sample = stream(tmp_path / "s.jsonl", 120)
    env.send(sample)
    first = env.start(rules_file(tmp_path), "--stop-when-idle", "2")
    assert first.wait() == 0
    assert len(first.dispatched()) == 120
    env.send(sample)
    second = env.start(rules_file(tmp_path), "--stop-when-idle", "2")
    assert second.wait() == 0
    assert second.dispatched() == []
    summary = second.summary()
    assert summary["messages"] == 120 and summary["duplicate"] == 120


def test_sigkill_then_restart_loses_nothing_and_repeats_only_after_the_checkpoint(env, tmp_path):
    env.send(stream(tmp_path / "s.jsonl", 3000))
    rules = rules_file(tmp_path)
    first = env.start(rules)
    first.wait_for(lambda: len(first.dispatched()) >= 600)
    first.kill()
    at_kill = asyncio.run(env.checkpoints())
    done_before = {line["idempotency_key"] for line in first.dispatched()}
    second = env.start(rules, "--stop-when-idle", "2")
    assert second.wait() == 0
    again = second.dispatched()
    assert {line["idempotency_key"] for line in again} | done_before == {
        line for line in _all_keys(3000)
    }
    for line in again:  # only events after the last saved checkpoint come again
        assert line["sequence_number"] > at_kill.get(line["partition_id"], -1)
    repeats = len(done_before & {line["idempotency_key"] for line in again})
    assert repeats < 3000


def _all_keys(count: int) -> set[str]:
    from worker.plan import idempotency_key

    return {idempotency_key(TOPIC, f"ev-{i}", "all", "0") for i in range(count)}


def test_held_events_hold_the_checkpoint_back_and_survive_a_restart(env, tmp_path):
    """With a long grace, the newest events stay held: the checkpoint stays before them,
    SIGTERM keeps them in state, and the next run releases them exactly once."""
    env.send(stream(tmp_path / "s.jsonl", 60, subjects=1))
    rules = rules_file(tmp_path, grace="30s")
    first = env.start(rules)
    first.wait_for(lambda: len(first.dispatched()) >= 30)
    time.sleep(1.5)  # several checkpoint intervals
    checkpoints = asyncio.run(env.checkpoints())
    (partition, seq), *_ = [(p, s) for p, s in checkpoints.items() if s >= 0]
    assert seq < 59 - 29  # the 30 newest events (30 s of event time) are still held
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    owners = asyncio.run(env.owners())
    assert len(owners) == 4 and not any(owners)  # ownership released on the way out
    assert len(first.dispatched()) == 30
    assert asyncio.run(env.checkpoints())[partition] <= seq + 1
    second = env.start(rules, "--stop-when-idle", "2")
    assert second.wait() == 0
    first_keys = {line["idempotency_key"] for line in first.dispatched()}
    second_keys = {line["idempotency_key"] for line in second.dispatched()}
    assert not first_keys & second_keys
    assert first_keys | second_keys == {
        __import__("worker.plan").plan.idempotency_key(TOPIC, f"ev-{i}", "all", "0")
        for i in range(60)
    }
    assert asyncio.run(env.checkpoints())[partition] == 59


def test_two_workers_share_the_partitions_and_dispatch_each_event_once(env, tmp_path):
    rules = rules_file(tmp_path)
    a = env.start(rules, "--stop-when-idle", "4", name="a")
    time.sleep(2)
    b = env.start(rules, "--stop-when-idle", "4", name="b")
    for batch in range(3):
        env.send(stream(tmp_path / f"s{batch}.jsonl", 300, start=batch * 300))
        time.sleep(1)
    assert a.wait() == 0 and b.wait() == 0
    keys = Counter(line["idempotency_key"] for w in (a, b) for line in w.dispatched())
    assert len(keys) == 900 and set(keys.values()) == {1}
    assert a.dispatched() and b.dispatched()


def test_an_action_type_without_executor_refuses_to_start(tmp_path):
    """A worker that cannot run an action the rules name must not silently skip it."""
    from worker.actions.log import LogExecutor
    from worker.consumer import Consumer
    from worker.errors import ConfigError
    from worker.positions import parse_positions
    from worker.rules import load_rules
    from worker.settings import Settings

    ruleset = load_rules(rules_file(tmp_path, action="webhook"))
    with pytest.raises(ConfigError, match="refusing to start rather than silently doing nothing"):
        Consumer(
            Settings(),
            ruleset,
            {"log": LogExecutor()},
            environ={},
            start_positions=parse_positions("earliest"),
        )


def test_missing_container_is_an_error_unless_allowed(env, tmp_path):
    env.env["AML_WORKER_CREATE_CONTAINER"] = "false"
    worker = env.start(rules_file(tmp_path))
    assert worker.wait(30) == 1
    text = worker.log_path.read_text()
    assert "does not exist" in text and "AML_WORKER_CREATE_CONTAINER" in text


def test_unreachable_storage_is_named(env, tmp_path):
    from tests.conftest import free_port

    env.env["AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING"] = (
        env.azurite.connection_string.replace(str(env.azurite.port), str(free_port()))
    )
    worker = env.start(rules_file(tmp_path))
    assert worker.wait(60) == 1
    assert "unreachable" in worker.log_path.read_text()


def test_bad_settings_fail_at_start_with_the_variable_named(env, tmp_path):
    env.env["AML_WORKER_CHECKPOINT_INTERVAL"] = "often"
    worker = env.start(rules_file(tmp_path))
    assert worker.wait(30) == 1
    assert "AML_WORKER_CHECKPOINT_INTERVAL" in worker.log_path.read_text()


def test_object_on_several_partitions_is_warned_about(env, tmp_path):
    env.send(stream(tmp_path / "s.jsonl", 40, subjects=1), "--partition-key", "none")
    worker = env.start(rules_file(tmp_path, grace="0s"), "--stop-when-idle", "2")
    assert worker.wait() == 0
    assert any(line["event"] == "object_on_several_partitions" for line in worker.lines())
