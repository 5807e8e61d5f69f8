"""`deadletter replay`: failed actions re-driven with their original keys, then marked."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TOPIC
from tests.test_run_actions import WebhookPeer
from tests.workers import Env, stream
from worker.plan import idempotency_key


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "deadletter", *args],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def history_of(env: Env, event_id: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "worker", "history", "--event-id", event_id, "--json"],
        env=env.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_failed_webhooks_are_redriven_once_with_their_keys(tmp_path, env):
    with WebhookPeer() as peer:
        peer.status = 400  # a permanent refusal: dead-lettered at once
        env.env["HOOK_URL"] = f"http://127.0.0.1:{peer.port}/hook"
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
            "  - name: hook\n    actions: [{type: webhook, id: h, url: '${HOOK_URL}'}]\n"
        )
        env.send(stream(tmp_path / "s.jsonl", 12))
        worker = env.start(rules, "--stop-when-idle", "2")
        assert worker.wait() == 0
        assert worker.summary()["action_failures"] == 12
        listed = json.loads(cli(env, "list", "--json", "--rule", "hook").stdout)
        assert len(listed) == 12 and {r["kind"] for r in listed} == {"action_failed"}
        assert all("400" in r["reason"] and r["attempts"] == 1 for r in listed)

        history = json.loads(history_of(env, "ev-3"))
        ((pid, entry),) = history["partitions"].items()
        assert entry["seen"] and entry["behind_checkpoint"]
        assert entry["dead_letters"][0]["kind"] == "action_failed"
        assert not entry["dead_letters"][0]["redriven"]
        peer.status = 202
        peer.requests.clear()
        env.env["AML_WORKER_RULES"] = str(rules)
        dry = cli(env, "replay", "--dry-run")
        assert dry.returncode == 0 and "redriven=12" in dry.stdout and peer.requests == []
        done = cli(env, "replay")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "redriven=12" in done.stdout
        expected = {idempotency_key(TOPIC, f"ev-{i}", "hook", "h") for i in range(12)}
        assert set(peer.keys()) == expected and sum(peer.keys().values()) == 12
        listed = json.loads(cli(env, "list", "--json").stdout)
        assert len(listed) == 12 and all(r["redriven_at"] for r in listed)  # marked, kept
        again = cli(env, "replay")
        assert "redriven=0" in again.stdout and "not_redrivable=12" in again.stdout
        assert sum(peer.keys().values()) == 12
        table = cli(env, "list").stdout
        assert "redriven" in table
        assert json.loads(history_of(env, "ev-3"))["partitions"][pid]["dead_letters"][0]["redriven"]
        text = subprocess.run(
            [sys.executable, "-m", "worker", "history", "--event-id", "ev-3"],
            env=env.env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "re-driven" in text and "before the checkpoint" in text
        unknown = json.loads(history_of(env, "nope"))
        assert unknown["known"] is False


def test_redrive_and_history_read_batch_blobs_and_old_single_record_blobs(tmp_path, env):
    """Dead letters stored one per blob (the old layout) and several in one blob (a
    message's batch) are listed, re-driven and marked in place alike."""
    import asyncio

    from azure.storage.blob.aio import ContainerClient

    async def regroup() -> str:
        """Move two of the four single-record blobs into one batch blob (a JSON array)."""
        async with ContainerClient.from_connection_string(
            env.azurite.connection_string, env.container
        ) as container:
            names = sorted(
                [b.name async for b in container.list_blobs() if "/deadletter/" in b.name]
            )
            assert len(names) == 4
            moved = []
            for name in names[:2]:
                moved.append(json.loads(await (await container.download_blob(name)).readall()))
                await container.delete_blob(name)
            batch = names[0].rsplit("/", 1)[0] + "/0-batch-test.json"
            await container.upload_blob(batch, json.dumps(moved).encode(), overwrite=True)
            return batch

    with WebhookPeer() as peer:
        peer.status = 400
        env.env["HOOK_URL"] = f"http://127.0.0.1:{peer.port}/hook"
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
            "  - name: hook\n    actions: [{type: webhook, id: h, url: '${HOOK_URL}'}]\n"
        )
        env.send(stream(tmp_path / "s.jsonl", 4, subjects=1))  # one partition
        worker = env.start(rules, "--stop-when-idle", "2")
        assert worker.wait() == 0
        batch = asyncio.run(regroup())
        listed = json.loads(cli(env, "list", "--json").stdout)
        assert len(listed) == 4
        in_batch = [r for r in listed if r["blob"] == batch]
        assert sorted(r["item"] for r in in_batch) == [0, 1]
        peer.status = 202
        peer.requests.clear()
        env.env["AML_WORKER_RULES"] = str(rules)
        done = cli(env, "replay")
        assert done.returncode == 0 and "redriven=4" in done.stdout, done.stderr[-2000:]
        assert sum(peer.keys().values()) == 4
        listed = json.loads(cli(env, "list", "--json").stdout)
        assert len(listed) == 4 and all(r.get("redriven_at") for r in listed)
        assert len([r for r in listed if r["blob"] == batch]) == 2  # still one blob
        event_id = in_batch[1]["event_id"]
        history = json.loads(history_of(env, event_id))
        ((_, entry),) = history["partitions"].items()
        assert [d["redriven"] for d in entry["dead_letters"]] == [True]
