"""Fuzzing `run` with hostile event content through the real SDK, dev-hub and Azurite
(issue 12, DESIGN §7).

Each example sends the regression corpus plus generated hostile bodies (tests/hostile.py) to
the hub, runs `run --stop-when-idle` against a webhook peer whose rule puts every
attacker-controlled field into the request, and checks what a user relies on:

- the run ends by itself with exit 0: every checkpoint reached the last message;
- every body is accounted for: the summary's outcomes add up, and its dead letters are
  exactly the invalid elements plus the render errors plus the failed actions;
- the dead letters of one message cost one blob write, however many elements it held;
- no secret the rules do not put in a header appears anywhere: log, request bodies and
  headers, dead letters; no traceback in the log.

`make test` runs one example; `make fuzz` (AML_WORKER_FUZZ=full) runs many, plus a long
pure-pipeline fuzz, and writes its figures to bench/results/fuzz.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, DevHubProcess
from tests.hostile import hostile_bodies
from tests.hostile_corpus import CASES, SECRET_ENV, rules_text
from tests.test_run_actions import WebhookPeer
from tests.workers import Env
from worker.events import Origin
from worker.pipeline import PartitionPipeline
from worker.rules import parse_rules

FULL = os.environ.get("AML_WORKER_FUZZ") == "full"
RUN_EXAMPLES = 12 if FULL else 1
PIPELINE_EXAMPLES = 5_000 if FULL else 300
GENERATED_PER_RUN = 60
OUTCOMES = ["foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched"]
FIGURES: dict[str, Any] = {"run": [], "pipeline": {}}


def _write_lines(path: Path, bodies: list[bytes]) -> None:
    path.write_bytes(b"".join(body + b"\n" for body in bodies))


def _sendable(body: bytes) -> bool:
    """`send` reads one body per line (as bytes: invalid UTF-8 goes as it is); a body with
    a raw line break cannot be a line, nor a blank one a message (the pure fuzz has them)."""
    return b"\n" not in body and b"\r" not in body and not body.isspace() and body != b""


@pytest.fixture(scope="module")
def figures():
    yield FIGURES
    if FULL:
        sys.path.insert(0, str(ROOT / "bench"))
        from common import machine_facts

        document = {
            "bench": "fuzz",
            "command": "make fuzz  # AML_WORKER_FUZZ=full pytest -q tests/test_fuzz.py",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_facts(),
            **FIGURES,
        }
        out = ROOT / "bench" / "results" / "fuzz.json"
        out.write_text(json.dumps(document, indent=2) + "\n")


@settings(
    max_examples=RUN_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(generated=st.lists(hostile_bodies(), min_size=GENERATED_PER_RUN, max_size=GENERATED_PER_RUN))
def test_run_accounts_for_every_hostile_body(tmp_path_factory, azurite, figures, generated):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    bodies = [case.body.encode() for case in CASES] + [b for b in generated if _sendable(b)]
    hub = DevHubProcess(tmp_path / "hub")  # a hub of its own: only this example's messages
    hub.start()
    env = Env(tmp_path, hub, azurite)
    started = time.monotonic()
    try:
        with WebhookPeer() as peer:
            env.env.update(SECRET_ENV)
            rules = tmp_path / "rules.yaml"
            rules.write_text(rules_text(hook_url=f"http://127.0.0.1:{peer.port}/hook"))
            sample = tmp_path / "bodies.jsonl"
            _write_lines(sample, bodies)
            env.send(sample)
            worker = env.start(rules, "--stop-when-idle", "2")
            code = worker.wait(180)
            log = worker.log_path.read_text()
            assert code == 0, log[-3000:]
            assert "Traceback" not in log
            summary = worker.summary()
            assert summary["messages"] == len(bodies)
            assert sum(summary[o] for o in OUTCOMES) == summary["events"], summary
            assert summary["dead_letter_write_failures"] == 0

            listed = env.cli("deadletter", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            dead = json.loads(listed.stdout)
            expected_dead = (
                summary["invalid"] + summary["render_errors"] + summary["action_failures"]
            )
            assert len(dead) == expected_dead == summary["dead_letters"]
            # One blob per message at most for its invalid elements and render errors.
            blobs = [b for b in asyncio_run(env.blobs()) if "/deadletter/" in b]
            assert len(blobs) <= len(bodies) + summary["action_failures"]

            for request in peer.requests:
                headers = dict(request["headers"])
                assert headers.pop("Authorization") == f"Bearer {SECRET_ENV['HOOK_TOKEN']}"
                outputs = [json.dumps(headers), request["body"].decode("utf-8", "replace")]
                for text in outputs:
                    for value in SECRET_ENV.values():
                        assert value not in text
            for text in (log, listed.stdout):
                for value in SECRET_ENV.values():
                    assert value not in text
            # Each matched event: a log action and a webhook; every webhook that was done
            # reached the peer once (it answers 202: no retry), and none other did. (Two
            # can share a key: one event id delivered on two partitions.)
            webhooks_done = summary["actions_dispatched"] - summary["planned"] // 2
            assert len(peer.requests) == webhooks_done

            checkpoints = asyncio_run(env.checkpoints())
            last = _last_sequence_numbers(env)
            assert checkpoints == last
            figures["run"].append(
                {
                    "bodies": len(bodies),
                    "events": summary["events"],
                    "invalid": summary["invalid"],
                    "dead_letters": summary["dead_letters"],
                    "dead_letter_blobs": len(blobs),
                    "webhooks": len(peer.requests),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
    finally:
        env.close()
        hub.stop()


def asyncio_run(coroutine: Any) -> Any:
    import asyncio

    return asyncio.run(coroutine)


def _last_sequence_numbers(env: Env) -> dict[str, int]:
    from azure.eventhub.aio import EventHubConsumerClient

    async def read() -> dict[str, int]:
        client = EventHubConsumerClient.from_connection_string(
            env.env["AML_WORKER_EVENTHUB_CONNECTION_STRING"], consumer_group="$Default"
        )
        async with client:
            result = {}
            for pid in await client.get_partition_ids():
                props = await client.get_partition_properties(pid)
                if not props["is_empty"]:
                    result[pid] = int(props["last_enqueued_sequence_number"])
            return result

    return asyncio_run(read())


def test_pipeline_fuzz(figures) -> None:
    """The pure pipeline under many more generated bodies than `run` can take."""
    ruleset = parse_rules(rules_text(), "rules.yaml", environ=SECRET_ENV)
    counts = {"bodies": 0, "invalid": 0, "planned": 0}
    started = time.monotonic()

    @settings(
        max_examples=PIPELINE_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(bodies=st.lists(hostile_bodies(), min_size=1, max_size=6))
    def fuzz(bodies: list[bytes]) -> None:
        pipeline = PartitionPipeline(ruleset)
        for number, body in enumerate(bodies):
            step = pipeline.feed(body, Origin("0", str(number), number))
            for action in step.actions:
                line = action.plan_json().encode("utf-8")
                for value in SECRET_ENV.values():
                    assert value.encode() not in line
        pipeline.finish()
        summary = pipeline.summary
        assert sum(getattr(summary, o) for o in OUTCOMES) == summary.events
        counts["bodies"] += len(bodies)
        counts["invalid"] += summary.invalid
        counts["planned"] += summary.planned

    fuzz()
    figures["pipeline"] = {
        **counts,
        "examples": PIPELINE_EXAMPLES,
        "seconds": round(time.monotonic() - started, 1),
    }
