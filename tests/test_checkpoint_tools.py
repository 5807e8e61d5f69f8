"""`checkpoints list / export / set` against dev-hub + Azurite (DESIGN §4, §6)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from tests.workers import Env, rules_file, stream


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "checkpoints", *args],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_list_export_set_and_rewind(tmp_path, env):
    env.send(stream(tmp_path / "s.jsonl", 80))
    rules = rules_file(tmp_path)
    live = env.start(rules, "--stop-when-idle", "2")
    assert live.wait() == 0
    listed = cli(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["partition_id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"0", "1", "2", "3"}
    assert all(r["lag"] == 0 and not r["owner_active"] for r in rows.values())
    assert sum(r["sequence_number"] + 1 for r in rows.values()) == 80
    table = cli(env, "list").stdout.splitlines()
    assert table[0].split()[:3] == ["partition", "sequence", "offset"] and len(table) == 5

    snapshot = tmp_path / "snap.json"
    assert cli(env, "export", str(snapshot)).returncode == 0
    saved = json.loads(snapshot.read_text())["partitions"]
    assert {p: m["sequence_number"] for p, m in saved.items()} == {
        p: r["sequence_number"] for p, r in rows.items()
    }

    # Rewind partition 0 to its sixth event: the worker processes 5.. again.
    moved = cli(env, "set", "--from", "seq:5", "--partitions", "0")
    assert moved.returncode == 0, moved.stderr
    assert "-> 4/" in moved.stdout and "ledger is kept" in moved.stdout
    assert asyncio.run(env.checkpoints())["0"] == 4
    again = env.start(rules, "--stop-when-idle", "2")
    assert again.wait() == 0
    sequence_numbers = sorted(
        (line["partition_id"], line["sequence_number"]) for line in again.dispatched()
    )
    last = rows["0"]["sequence_number"]
    assert sequence_numbers == [("0", n) for n in range(5, last + 1)]

    # And back to the snapshot.
    cli(env, "set", "--from", "earliest")
    assert set(asyncio.run(env.checkpoints()).values()) == {-1}
    assert cli(env, "set", "--from", f"file:{snapshot}").returncode == 0
    assert asyncio.run(env.checkpoints()) == {p: m["sequence_number"] for p, m in saved.items()}


def test_set_refuses_while_a_worker_owns_the_partitions(tmp_path, env):
    rules = rules_file(tmp_path)
    worker = env.start(rules)
    worker.wait_for(
        lambda: sum(line["event"] == "partition_started" for line in worker.lines()) == 4
    )
    refused = cli(env, "set", "--from", "earliest")
    assert refused.returncode == 1 and "owned by a running worker" in refused.stderr
    forced = cli(env, "set", "--from", "earliest", "--force")
    assert forced.returncode == 0, forced.stderr
