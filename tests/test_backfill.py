"""`replay --source eventhub`: history through the rules beside a live worker (issue 5)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from aiosmtpd.controller import Controller

from tests.conftest import TOPIC, free_port
from tests.test_run_actions import MailPeer
from tests.workers import Env, rules_file, stream
from worker.plan import idempotency_key


def replay(env: Env, rules: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "replay", "--rules", str(rules), "--source", "eventhub",
         *args],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def plan_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dry_run_backfill_beside_a_live_worker_leaves_its_checkpoints_alone(tmp_path, env):
    env.send(stream(tmp_path / "s.jsonl", 120, poison=1))
    rules = rules_file(tmp_path)
    live = env.start(rules, "--stop-when-idle", "2")
    assert live.wait() == 0
    before = asyncio.run(env.checkpoints())
    plan = tmp_path / "plan.jsonl"
    result = replay(env, rules, "--dry-run", "--output", str(plan), "--summary-json",
                    str(tmp_path / "sum.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = plan_of(plan)
    keys = {idempotency_key(TOPIC, f"ev-{i}", "all", "0") for i in range(120)}
    assert {line["idempotency_key"] for line in lines} == keys  # the live worker's keys
    partitions = [line["source"]["partition_id"] for line in lines]
    assert partitions == sorted(partitions, key=int)  # deterministic: partition by partition
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["messages"] == 121 and summary["invalid"] == 1
    assert asyncio.run(env.checkpoints()) == before
    again = tmp_path / "again.jsonl"
    replay(env, rules, "--dry-run", "--output", str(again))
    assert again.read_bytes() == plan.read_bytes()
    # From the live group's checkpoints there is nothing left to replay.
    rest = tmp_path / "rest.jsonl"
    result = replay(env, rules, "--dry-run", "--from", "checkpoint", "--output", str(rest))
    assert result.returncode == 0, result.stderr[-2000:]
    assert rest.read_text() == ""


def test_until_partitions_and_only_rule(tmp_path, env):
    env.send(stream(tmp_path / "s.jsonl", 80))
    rules = tmp_path / "two.yaml"
    rules.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
        "  - name: a\n    actions: [{type: log, message: x}]\n"
        "  - name: b\n    actions: [{type: log, message: y}]\n"
    )
    plan = tmp_path / "plan.jsonl"
    result = replay(env, rules, "--dry-run", "--output", str(plan), "--partitions", "1",
                    "--from", "seq:2", "--until", "seq:5", "--only-rule", "b")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = plan_of(plan)
    assert {line["rule"] for line in lines} == {"b"}
    assert [line["source"]["sequence_number"] for line in lines] == [2, 3, 4, 5]
    assert {line["source"]["partition_id"] for line in lines} == {"1"}


def test_the_live_group_is_refused_unless_forced(tmp_path, env):
    result = replay(env, rules_file(tmp_path), "--dry-run", "--consumer-group", "$Default")
    assert result.returncode == 2 and "live worker's group" in result.stderr


def test_real_backfill_does_not_repeat_what_the_live_ledger_recorded(tmp_path, env):
    mail = MailPeer()
    smtp = Controller(mail, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        env.env.update(
            {
                "AML_WORKER_SMTP_HOST": "127.0.0.1",
                "AML_WORKER_SMTP_PORT": str(smtp.port),
                "AML_WORKER_SMTP_TLS": "none",
                "AML_WORKER_SMTP_FROM": "worker@example.com",
            }
        )
        rules = tmp_path / "mail.yaml"
        rules.write_text(
            f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
            "  - name: mail\n    actions: [{type: email, to: [t@example.com], subject: x}]\n"
        )
        env.send(stream(tmp_path / "s.jsonl", 30))
        live = env.start(rules, "--stop-when-idle", "2")
        assert live.wait() == 0
        assert len(mail.messages) == 30
        env.send(stream(tmp_path / "more.jsonl", 10, start=30))
        summary = tmp_path / "sum.json"
        dead = str(tmp_path / "dead.jsonl")
        result = replay(env, rules, "--summary-json", str(summary), "--dead-letter", dead)
        assert result.returncode == 0, result.stderr[-2000:]
        counts = json.loads(summary.read_text())
        assert counts["actions_skipped_by_ledger"] == 30  # the live worker sent these
        assert counts["actions_dispatched"] == 10  # only the new ones
        assert len(mail.messages) == 40
        shown = subprocess.run(
            [sys.executable, "-m", "worker", "history", "--event-id", "ev-0", "--json"],
            env=env.env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (entry,) = json.loads(shown)["partitions"].values()
        assert [(a["action"], a["rule"]) for a in entry["ledger"]] == [("email", "mail")]
        assert entry["seen"] and entry["behind_checkpoint"]
    finally:
        smtp.stop()


def test_a_killed_replay_resumes_from_its_own_progress(tmp_path, env):
    """The replay's consumer group keeps its low watermark: --resume goes on from there,
    losing nothing and repeating only what came after the last save."""
    import signal
    import time

    env.send(stream(tmp_path / "s.jsonl", 3000))
    rules = rules_file(tmp_path)
    env.env["AML_WORKER_CHECKPOINT_INTERVAL"] = "0.2"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(
        [sys.executable, "-m", "worker", "replay", "--rules", str(rules), "--source", "eventhub",
         "--dead-letter", str(tmp_path / "d1.jsonl")],
        env=env.env, stderr=log, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # some actions done and some progress saved
        if (tmp_path / "first.log").read_text().count('"action_log"') >= 500 and asyncio.run(
            _group_checkpoints(env, "aml-worker-replay")
        ):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    done = [
        json.loads(line)
        for line in (tmp_path / "first.log").read_text().splitlines()
        if '"action_log"' in line
    ]
    assert len(done) >= 500
    group_marks = asyncio.run(_group_checkpoints(env, "aml-worker-replay"))
    assert group_marks, "the replay saved no progress"
    second = replay(env, rules, "--resume", "--dead-letter", str(tmp_path / "d2.jsonl"))
    assert second.returncode == 0, second.stderr[-2000:]
    again = [json.loads(line) for line in second.stderr.splitlines() if '"action_log"' in line]
    keys = {line["idempotency_key"] for line in done} | {line["idempotency_key"] for line in again}
    assert keys == {idempotency_key(TOPIC, f"ev-{i}", "all", "0") for i in range(3000)}
    for line in again:
        assert line["sequence_number"] > group_marks.get(line["partition_id"], -1)
    assert len(again) < 3000  # it did not start over


async def _group_checkpoints(env: Env, group: str) -> dict[str, int]:
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

    store = BlobCheckpointStore.from_connection_string(env.azurite.connection_string, env.container)
    async with store:
        found = await store.list_checkpoints(f"127.0.0.1:{env.dev_hub.port}", "aml-events", group)
    return {c["partition_id"]: int(c["sequence_number"]) for c in found}
