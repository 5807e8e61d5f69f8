"""`run` with every action type against real peers on loopback (DESIGN §5).

- A worker process with log, webhook, email and eventhub actions is SIGKILLed mid-stream
  and restarted: nothing is lost; the webhook peer (deduping by `Idempotency-Key`, as a
  real target would) sees each key's effect once; ledger-protected actions (email, Event
  Hubs forwarding) repeat at most across the success-to-ledger window.
- aml_job and adf_pipeline need Azure credentials and ARM endpoints, which a child process
  cannot be given without a cloud: they run through the same `run_worker` in-process, with
  the real MLClient and ARM pipeline aimed at the local HTTPS stub. After a rewind (state
  and checkpoints deleted, ledger kept, as `checkpoints set` does) the replayed events do
  not create a second AML job (deterministic job name) nor a second Data Factory run
  (ledger).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from email import message_from_bytes
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from azure.eventhub.aio import EventHubConsumerClient

from tests.conftest import TOPIC, DevHubProcess, eg, free_port
from tests.workers import Env
from worker.plan import idempotency_key

N = 200
MAX_INFLIGHT = 4


class WebhookPeer:
    """An aiohttp receiver in its own thread; records every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.status = 202  # what it answers; a test may switch it
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            self.requests.append({"headers": dict(request.headers), "body": body})
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> WebhookPeer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def keys(self) -> Counter[str]:
        return Counter(r["headers"]["Idempotency-Key"] for r in self.requests)


class MailPeer:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def forwarded(connection_string: str, expected: int, settle_s: float = 3) -> list[Any]:
    received: list[Any] = []
    last = time.monotonic()

    async def on_event(context: Any, event: Any) -> None:
        nonlocal last
        received.append(event)
        last = time.monotonic()

    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="$Default"
    )
    async with client:
        task = asyncio.ensure_future(client.receive(on_event, starting_position="-1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if len(received) >= expected and time.monotonic() - last > settle_s:
                break
        await client.close()
        task.cancel()
    return received


@pytest.fixture
def hub(tmp_path):
    server = DevHubProcess(tmp_path / "hub", hubs=("aml-events:4", "forward:2"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def forward_env(tmp_path, hub, azurite):
    environment = Env(tmp_path, hub, azurite)
    yield environment
    environment.close()


def test_sigkill_with_every_network_action_loses_nothing(tmp_path, hub, forward_env):
    env = forward_env
    mail = MailPeer()
    smtp = Controller(mail, hostname="127.0.0.1", port=free_port())
    smtp.start()
    with WebhookPeer() as webhook:
        env.env.update(
            {
                "AML_WORKER_SMTP_HOST": "127.0.0.1",
                "AML_WORKER_SMTP_PORT": str(smtp.port),
                "AML_WORKER_SMTP_TLS": "none",
                "AML_WORKER_SMTP_FROM": "worker@example.com",
                "AML_WORKER_MAX_INFLIGHT": str(MAX_INFLIGHT),
                "HOOK_URL": f"http://127.0.0.1:{webhook.port}/hook",
                "FWD": hub.hub_connection_string("forward"),
            }
        )
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
            "  - name: every\n    actions:\n"
            "      - {type: log, id: note, message: '{{ event.id }}'}\n"
            "      - {type: webhook, id: hook, url: '${HOOK_URL}'}\n"
            "      - {type: email, id: mail, to: [team@example.com], subject: '{{ event.id }}'}\n"
            "      - {type: eventhub, id: fwd, connection_string: '${FWD}'}\n"
        )
        sample = tmp_path / "s.jsonl"
        sample.write_text(
            "".join(
                json.dumps(
                    eg(
                        f"ev-{i}",
                        subject=f"runs/r{i % 25}",
                        time=f"2024-06-10T10:{i // 60:02d}:{i % 60:02d}Z",
                    )
                )
                + "\n"
                for i in range(N)
            )
        )
        env.send(sample)
        first = env.start(rules)
        deadline = time.monotonic() + 60
        while len(webhook.requests) < N // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()
        second = env.start(rules, "--stop-when-idle", "3")
        assert second.wait(120) == 0, second.log_path.read_text()[-3000:]

        def keys(action: str) -> set[str]:
            return {idempotency_key(TOPIC, f"ev-{i}", "every", action) for i in range(N)}

        # Idempotent target: every key arrived; the peer dedupes repeats by key.
        hooks = webhook.keys()
        assert set(hooks) == keys("hook")
        # Ledger-protected: every message arrived; repeats only from the kill window.
        mails = Counter(m["Message-ID"].strip("<>").split("@")[0] for m in mail.messages)
        assert set(mails) == keys("mail")
        events = asyncio.run(forwarded(env.env["FWD"], N))
        fwd = Counter(
            (e.properties.get(b"aml-worker-idempotency-key") or b"").decode() for e in events
        )
        assert set(fwd) == keys("fwd")
        mail_repeats = sum(mails.values()) - N
        fwd_repeats = sum(fwd.values()) - N
        hook_repeats = sum(hooks.values()) - N
        print(f"repeats: webhook {hook_repeats}, email {mail_repeats}, eventhub {fwd_repeats}")
        assert mail_repeats + fwd_repeats <= 4 * MAX_INFLIGHT * 2
    smtp.stop()


@pytest.fixture
def stub():
    from tests.arm_stub import running_stub

    saved = os.environ.get("AZUREML_CURRENT_CLOUD")
    with running_stub() as server:
        yield server
    if saved is None:
        os.environ.pop("AZUREML_CURRENT_CLOUD", None)
    else:
        os.environ["AZUREML_CURRENT_CLOUD"] = saved


async def test_aml_job_and_adf_pipeline_through_run_and_a_rewind(tmp_path, dev_hub, azurite, stub):
    import ssl

    import aiohttp
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.storage.blob.aio import ContainerClient

    from tests.arm_stub import AsyncStubCredential
    from tests.test_action_aml_job import COMMAND_JOB, StubClients
    from worker.actions.adf_pipeline import AdfPipelineExecutor
    from worker.actions.aml_job import AmlJobExecutor
    from worker.actions.log import LogExecutor
    from worker.consumer import run_worker
    from worker.positions import parse_positions
    from worker.rules import load_rules
    from worker.settings import Settings

    env = Env(tmp_path, dev_hub, azurite)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "train.yml").write_text(COMMAND_JOB)
    factory = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo/"
        "providers/Microsoft.DataFactory/factories/adf-demo"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
        "  - name: retrain\n    actions:\n"
        "      - {type: aml_job, id: job, job: jobs/train.yml, "
        "inputs: {drift: '{{ data.driftCoefficient }}'}}\n"
        f"      - {{type: adf_pipeline, id: adf, factory: '{factory}', pipeline: refresh, "
        "parameters: {subject: '{{ event.subject }}'}}\n"
    )
    sample = tmp_path / "s.jsonl"
    sample.write_text(
        "".join(
            json.dumps(
                eg(
                    f"d-{i}",
                    subject=f"datadrift/m{i}",
                    type="Microsoft.MachineLearningServices.DatasetDriftDetected",
                    data={"driftCoefficient": 0.5 + i / 10},
                )
            )
            + "\n"
            for i in range(5)
        )
    )
    env.send(sample)
    settings = Settings(
        eventhub_connection_string=env.env["AML_WORKER_EVENTHUB_CONNECTION_STRING"],
        checkpoint_store_connection_string=env.env["AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING"],
        checkpoint_container=env.container,
        create_container=True,
        load_balancing_interval=1,
        ownership_expiry=3,
        checkpoint_interval=0.3,
        shutdown_timeout=5,
        http_port="off",
    )
    ruleset = load_rules(rules)

    async def run_once() -> Any:
        context = ssl.create_default_context(cafile=str(stub.cert_path))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        clients = StubClients(stub)
        executors = {
            "log": LogExecutor(),
            "aml_job": AmlJobExecutor(
                settings, credential=clients.credential, client_factory=clients
            ),
            "adf_pipeline": AdfPipelineExecutor(
                settings,
                credential=AsyncStubCredential(),
                transport=AioHttpTransport(session=session, session_owner=True),
                base_url=stub.url,
            ),
        }
        return await run_worker(
            settings, ruleset, parse_positions("earliest"), stop_when_idle=2, executors=executors
        )

    stats = await run_once()
    assert stats.actions == 10 and stats.action_failures == 0
    job_puts = stub.calls("PUT", "/jobs/")
    runs = stub.calls("POST", "/createRun")
    assert len(job_puts) == 5 and len(runs) == 5
    names = {c.path.rsplit("/", 1)[-1].lower() for c in job_puts}
    assert names == {f"aew-{idempotency_key(TOPIC, f'd-{i}', 'retrain', 'job')}" for i in range(5)}
    assert sorted(c.body["subject"] for c in runs) == [f"datadrift/m{i}" for i in range(5)]

    # Rewind: forget checkpoints and dedupe state (keep the ledger), replay everything.
    container = ContainerClient.from_connection_string(azurite.connection_string, env.container)
    async with container:
        async for blob in container.list_blobs():
            if "/checkpoint/" in blob.name or "/state/" in blob.name:
                await container.delete_blob(blob.name)
    stats = await run_once()
    assert stats.summary.matched == 5
    assert len(stub.calls("PUT", "/jobs/")) == 5  # the job names already exist
    assert len(stub.calls("POST", "/createRun")) == 5  # the ledger knew these runs
    assert stats.skipped == 5
