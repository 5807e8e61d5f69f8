"""Helpers to run worker processes against dev-hub and Azurite in tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

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
        self.workers: list[Worker] = []
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
            "AML_WORKER_HTTP_PORT": "0",
            "AML_WORKER_HTTP_HOST": "127.0.0.1",
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`aml-event-worker ARGS` against this hub and container (exit code not checked)."""
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

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
        worker = Worker(self, rules, list(args), self.tmp_path / f"{name}-{uuid.uuid4().hex[:6]}")
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        """No worker outlives its test, whatever the test's outcome."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(10)
            worker.handle.close()

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
