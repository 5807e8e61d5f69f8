"""Retries, per-object order, concurrency, ledger and dead letters (DESIGN §5)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.conftest import TOPIC, eg
from worker.delivery import Delivery, Ledger, Limits
from worker.errors import ActionError
from worker.events import Origin, decode_body
from worker.plan import PlannedAction, plan_rule
from worker.rules import parse_rules


def planned_actions(action: str, *events: dict[str, Any]) -> list[PlannedAction]:
    """Plan one rule with `action` for each event, through the real loader and planner."""
    ruleset = parse_rules(
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n  - name: r\n    actions:\n      - {action}\n",
        "rules.yaml",
        secrets="ignore",
    )
    result = []
    for n, obj in enumerate(events):
        decoded, _ = decode_body(json.dumps(obj).encode(), Origin("0", str(n), n))
        result += [
            p for p in plan_rule(ruleset.rules[0], decoded[0]) if isinstance(p, PlannedAction)
        ]
    return result


class Target:
    """A scripted peer: per call, either succeed or raise the next scripted error."""

    def __init__(self, script: list[Exception | None] | None = None, delay: float = 0) -> None:
        self.script = list(script or [])
        self.delay = delay
        self.calls: list[tuple[str, Any]] = []
        self.active = 0
        self.max_active = 0

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            self.calls.append((planned.event.id, params))
            step = self.script.pop(0) if self.script else None
            if step is not None:
                raise step
            return {"ok": True}
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.dead: list[dict[str, Any]] = []
        self.sleeps: list[float] = []
        self.results: list[str] = []

    async def dead_letter(self, name: str, record: dict[str, Any]) -> None:
        self.dead.append(record)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_result(self, result: str, planned: PlannedAction, error: str) -> None:
        self.results.append(result)


def delivery(target: Target, rec: Recorder, *, kind: str = "webhook", ledger=None, limit=64):
    return Delivery(
        "0",
        {kind: target},
        Limits.create(limit),
        environ={"TOKEN": "s3cret"},
        ledger=ledger,
        dead_letter=rec.dead_letter,
        on_result=rec.on_result,
        sleep=rec.sleep,
    )


WEBHOOK = "{type: webhook, url: 'https://x.example.com', retry: {attempts: 4, initial: 1s, max: 5s}, headers: {A: '${TOKEN}'}}"  # noqa: E501


async def test_retryable_errors_are_retried_with_backoff_then_succeed():
    target = Target([ActionError("503"), ActionError("503")])
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    assert await delivery(target, rec).run_one(planned) == "done"
    assert len(target.calls) == 3 and rec.dead == []
    assert 0.5 <= rec.sleeps[0] <= 1 and 1 <= rec.sleeps[1] <= 2  # exponential, jittered
    assert target.calls[0][1]["headers"]["A"] == "s3cret"  # secrets revealed only here


async def test_retry_after_is_honoured():
    target = Target([ActionError("429", retry_after_s=4.5)])
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    await delivery(target, rec).run_one(planned)
    assert rec.sleeps == [4.5]


async def test_permanent_error_is_dead_lettered_at_once_without_secrets():
    target = Target([ActionError("400 bad request", retryable=False)])
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    assert await delivery(target, rec).run_one(planned) == "dead_lettered"
    assert len(target.calls) == 1 and rec.sleeps == []
    (dead,) = rec.dead
    assert dead["attempts"] == 1 and dead["reason"] == "400 bad request"
    assert dead["idempotency_key"] == planned.key and dead["event"]["id"] == "a"
    assert "s3cret" not in json.dumps(dead) and dead["params"]["headers"]["A"] == "***"


async def test_exhausted_retries_dead_letter_with_the_attempt_count():
    target = Target([ActionError("503")] * 10)
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    assert await delivery(target, rec).run_one(planned) == "dead_lettered"
    assert len(target.calls) == 4 and rec.dead[0]["attempts"] == 4


async def test_unexpected_executor_crash_is_a_dead_letter_not_a_crash():
    target = Target([RuntimeError("boom")])
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    assert await delivery(target, rec).run_one(planned) == "dead_lettered"
    assert "RuntimeError: boom" in rec.dead[0]["reason"]


async def test_later_events_of_an_object_wait_while_others_flow():
    """a1 retries (slowly); a2 waits for it, b1 does not."""
    target = Target([ActionError("503")], delay=0.01)
    rec = Recorder()

    async def slow_sleep(seconds: float) -> None:
        await asyncio.sleep(0.2)

    d = delivery(target, rec)
    d.sleep = slow_sleep
    a1, a2, b1 = planned_actions(
        WEBHOOK, eg("a1", subject="A"), eg("a2", subject="A"), eg("b1", subject="B")
    )
    finished: list[str] = []
    for p in (a1, a2, b1):
        d.submit(p.event.object_key, [p], lambda p=p: finished.append(p.event.id))
    assert await d.drain(5)
    assert finished == ["b1", "a1", "a2"]
    assert [c[0] for c in target.calls] == ["a1", "b1", "a1", "a2"]


async def test_action_concurrency_and_worker_inflight_are_capped():
    target = Target(delay=0.02)
    rec = Recorder()
    events = [eg(f"e{i}", subject=f"s{i}") for i in range(12)]
    d = delivery(target, rec, limit=64)
    for p in planned_actions("{type: webhook, url: 'https://x', concurrency: 3}", *events):
        d.submit(p.event.object_key, [p], lambda: None)
    await d.drain(5)
    assert target.max_active == 3 and len(target.calls) == 12
    target = Target(delay=0.02)
    d = delivery(target, Recorder(), limit=2)
    for p in planned_actions("{type: webhook, url: 'https://x'}", *events):
        d.submit(p.event.object_key, [p], lambda: None)
    await d.drain(5)
    assert target.max_active == 2


@pytest.fixture
async def blob_store(azurite):
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
    from azure.storage.blob.aio import ContainerClient

    from worker.checkpoints import BlobPartitionStore

    name = f"l{uuid.uuid4().hex[:12]}"
    container = ContainerClient.from_connection_string(azurite.connection_string, name)
    await container.create_container()
    sdk = BlobCheckpointStore.from_connection_string(azurite.connection_string, name)
    yield BlobPartitionStore(
        container, sdk, fully_qualified_namespace="ns", eventhub_name="hub", consumer_group="cg"
    )
    await sdk.close()
    await container.delete_container()
    await container.close()


async def test_ledger_protected_actions_run_once_across_restarts(blob_store):
    email = "{type: email, to: [a@example.com], subject: s}"
    (planned,) = planned_actions(email, eg("a"))
    ledger = Ledger(blob_store, "0", retention_s=3600)
    await ledger.load()
    target = Target()
    rec = Recorder()
    assert await delivery(target, rec, kind="email", ledger=ledger).run_one(planned) == "done"
    # A new owner (or a restart) loads the ledger and skips the action.
    again = Ledger(blob_store, "0", retention_s=3600)
    await again.load()
    assert planned.key in again
    target2 = Target()
    result = await delivery(target2, Recorder(), kind="email", ledger=again).run_one(planned)
    assert result == "skipped" and target2.calls == []
    names = [b.name async for b in blob_store.container.list_blobs()]
    assert names == ["ns/hub/cg/ledger/0"]


async def test_ledger_entries_expire_after_retention(blob_store):
    email = "{type: email, to: [a@example.com], subject: s}"
    (planned,) = planned_actions(email, eg("a"))
    ledger = Ledger(blob_store, "1", retention_s=3600)
    await ledger.load()
    await ledger.record(planned)
    expired = Ledger(blob_store, "1", retention_s=-1)
    await expired.load()
    assert planned.key not in expired


async def test_concurrent_ledger_writers_merge(blob_store):
    email = "{type: email, to: [a@example.com], subject: s}"
    a, b = planned_actions(email, eg("a"), eg("b"))
    one, two = Ledger(blob_store, "2", 3600), Ledger(blob_store, "2", 3600)
    await one.load()
    await two.load()
    await one.record(a)
    await two.record(b)  # its ETag is stale: reload and append, never overwrite
    check = Ledger(blob_store, "2", 3600)
    await check.load()
    assert a.key in check and b.key in check


async def test_an_unexpected_exception_quoting_a_secret_is_redacted_in_its_dead_letter():
    """Executors redact their own ActionErrors; a bug's exception text may quote what was
    sent, so delivery redacts it too, before cutting it (DESIGN §7)."""
    target = Target([RuntimeError("request to https://x.example.com with A=s3cret failed")])
    rec = Recorder()
    (planned,) = planned_actions(WEBHOOK, eg("a"))
    assert await delivery(target, rec).run_one(planned) == "dead_lettered"
    text = json.dumps(rec.dead)
    assert "s3cret" not in text and "RuntimeError: request to" in text
