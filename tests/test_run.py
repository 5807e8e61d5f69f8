"""`run` end to end: real SDK clients, dev-hub and Azurite, worker processes killed and restarted.

The worker runs as a child process exactly as users run it; its JSON log lines are the
record of what it dispatched (`action_log` carries partition, sequence number and key).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import TOPIC
from tests.workers import rules_file, stream


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
    """One paragraph (what, where, the likely fix), exit code 4, never a traceback."""
    from tests.conftest import free_port

    env.env["AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING"] = (
        env.azurite.connection_string.replace(str(env.azurite.port), str(free_port()))
    )
    worker = env.start(rules_file(tmp_path))
    assert worker.wait(60) == 4
    text = worker.log_path.read_text()
    assert "the checkpoint storage at http://127.0.0.1:" in text and "unreachable" in text
    assert "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING" in text
    assert "Traceback" not in text


def test_unreachable_hub_is_named_without_a_traceback(env, tmp_path):
    from tests.conftest import free_port

    port = str(free_port())
    env.env["AML_WORKER_EVENTHUB_CONNECTION_STRING"] = env.env[
        "AML_WORKER_EVENTHUB_CONNECTION_STRING"
    ].replace(str(env.dev_hub.port), port)
    worker = env.start(rules_file(tmp_path))
    assert worker.wait(90) == 4
    text = worker.log_path.read_text()
    assert f"the event hub at 127.0.0.1:{port} (hub aml-events) is unreachable" in text
    assert "AML_WORKER_EVENTHUB_CONNECTION_STRING" in text
    assert "Traceback" not in text


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


def test_health_readiness_and_metrics_over_http(env, tmp_path):
    """The endpoints of a running worker: alive, ready once it owns partitions, and the
    metrics that dashboards and alerts query."""
    import urllib.request

    env.env["AML_WORKER_STALL_TIMEOUT"] = "8"  # lag is polled every 2 s
    env.send(stream(tmp_path / "s.jsonl", 50, poison=2))
    worker = env.start(rules_file(tmp_path))
    worker.wait_for(lambda: any(line["event"] == "http_listening" for line in worker.lines()))
    port = next(line["port"] for line in worker.lines() if line["event"] == "http_listening")
    worker.wait_for(lambda: len(worker.dispatched()) == 50)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    assert get("/healthz")[0] == 200
    status, body = get("/readyz")
    assert status == 200, body
    time.sleep(3)  # one lag poll
    _, metrics = get("/metrics")
    for expected in (
        'aml_worker_events_total{outcome="matched"} 50.0',
        'aml_worker_actions_total{result="done",type="log"} 50.0',
        "aml_worker_owned_partitions 4.0",
        'aml_worker_dead_letters_total{kind="invalid_body"} 2.0',
        "aml_worker_action_duration_seconds_bucket",
        "aml_worker_checkpoint_writes_total",
        'aml_worker_partition_lag{partition="0"} 0.0',
        'aml_worker_held_events{partition="0"} 0.0',
    ):
        assert expected in metrics, expected
    assert (
        sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("aml_worker_messages_total{")
        )
        == 52
    )
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_a_silently_stalled_partition_is_reported_and_reconnected(env, tmp_path):
    """dev-hub's fault injection (SIGUSR1) leaves every attached receiver silent: the hub
    has events the worker never gets. The watchdog sees unread events with nothing
    delivered, reports the stall, reconnects, and the events arrive exactly once."""
    import os
    import urllib.request

    env.env["AML_WORKER_STALL_TIMEOUT"] = "3"
    env.send(stream(tmp_path / "a.jsonl", 20))
    worker = env.start(rules_file(tmp_path))
    worker.wait_for(lambda: len(worker.dispatched()) == 20)
    port = next(line["port"] for line in worker.lines() if line["event"] == "http_listening")
    os.kill(env.dev_hub.process.pid, signal.SIGUSR1)
    time.sleep(0.5)
    env.send(stream(tmp_path / "b.jsonl", 20, start=20))

    def readyz() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
                return reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.read().decode()

    reports: list[str] = []
    deadline = time.monotonic() + 60
    while len(worker.dispatched()) < 40 and time.monotonic() < deadline:
        reports.append(readyz())
        time.sleep(0.3)
    keys = Counter(line["idempotency_key"] for line in worker.dispatched())
    assert len(keys) == 40 and set(keys.values()) == {1}, worker.log_path.read_text()[-3000:]
    stalls = [line for line in worker.lines() if line["event"] == "partition_stalled_reconnecting"]
    assert stalls and all(line["unread"] > 0 for line in stalls)
    assert any("stalled" in report for report in reports)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    reconnects = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("aml_worker_partition_reconnects_total{")
    )
    assert reconnects == len(stalls)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_rules_reload_switches_atomically_and_keeps_the_old_on_error(env, tmp_path):
    """A ConfigMap update swaps a symlink: valid new rules take over, invalid ones are
    logged and the old rules stay in force."""
    import os

    from tests.conftest import TOPIC

    def version(name: str, rule: str) -> Path:
        path = tmp_path / name
        path.write_text(
            f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\n"
            f"rules:\n  - name: {rule}\n    actions: [{{type: log, message: x}}]\n"
        )
        return path

    link = tmp_path / "rules.yaml"
    link.symlink_to(version("v1.yaml", "first"))
    worker = env.start(link)
    worker.wait_for(lambda: sum(e["event"] == "partition_started" for e in worker.lines()) == 4)
    env.send(stream(tmp_path / "a.jsonl", 10))
    worker.wait_for(lambda: len(worker.dispatched()) == 10)

    def swap(target: Path) -> None:
        tmp = tmp_path / "rules.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, link)

    swap(version("v2.yaml", "second"))
    worker.wait_for(lambda: any(e["event"] == "rules_reloaded" for e in worker.lines()))
    env.send(stream(tmp_path / "b.jsonl", 10, start=10))
    worker.wait_for(lambda: len(worker.dispatched()) == 20)
    assert {e["rule"] for e in worker.dispatched()[10:]} == {"second"}

    bad = tmp_path / "v3.yaml"
    bad.write_text("version: 1\ntopics: []\nrules: []\n")
    swap(bad)
    worker.wait_for(lambda: any(e["event"] == "rules_reload_failed" for e in worker.lines()))
    env.send(stream(tmp_path / "c.jsonl", 10, start=20))
    worker.wait_for(lambda: len(worker.dispatched()) == 30)
    assert {e["rule"] for e in worker.dispatched()[20:]} == {"second"}
    worker.process.send_signal(signal.SIGTERM)
    assert worker.wait() == 0
