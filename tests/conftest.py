"""Shared test helpers: sample locations and small event builders."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.events import Event, Origin, decode_body

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-demo"
)
RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"


def eg(
    id: str = "e1",
    *,
    subject: str = "experiments/x/runs/r1",
    type: str = RUN_STATUS,
    time: str = "2024-06-10T10:00:00Z",
    data: Any = None,
    topic: str = TOPIC,
    **extra: Any,
) -> dict[str, Any]:
    """An Event Grid schema event object."""
    return {
        "topic": topic,
        "subject": subject,
        "eventType": type,
        "eventTime": time,
        "id": id,
        "data": {} if data is None else data,
        "dataVersion": "2",
        "metadataVersion": "1",
        **extra,
    }


def ce(
    id: str = "c1",
    *,
    subject: str = "experiments/x/runs/r1",
    type: str = RUN_STATUS,
    time: str | None = "2024-06-10T10:00:00Z",
    data: Any = None,
    source: str = TOPIC,
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured event object."""
    event = {
        "specversion": "1.0",
        "source": source,
        "subject": subject,
        "type": type,
        "id": id,
        "data": {} if data is None else data,
        **extra,
    }
    if time is not None:
        event["time"] = time
    return event


def event_of(obj: dict[str, Any], origin: Origin | None = None) -> Event:
    """Decode one event object, failing the test if it is rejected."""
    events, rejections = decode_body(json.dumps(obj).encode(), origin or Origin())
    assert not rejections, rejections
    assert len(events) == 1
    return events[0]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Commands configure structlog globally; every test starts from the defaults."""
    import structlog

    yield
    structlog.reset_defaults()


@pytest.fixture
def shared_samples() -> Path:
    if not (SHARED_SAMPLES / "stream.jsonl").is_file():
        pytest.skip("../shared/samples is not beside this checkout")
    return SHARED_SAMPLES


# --- real servers on loopback ---------------------------------------------------------------

AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Azurite:
    """Azurite's blob service on a free loopback port (persisting under `location`)."""

    def __init__(self, location: Path) -> None:
        if not AZURITE.exists():
            pytest.fail("Azurite is not installed: run `make test` (it runs npm install)")
        self.location = location
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(AZURITE),
                "--silent",
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--location",
                str(self.location),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


class DevHubProcess:
    """`aml-event-worker dev-hub` as a child process; stdout's first line = connection string."""

    def __init__(self, data_dir: Path, hubs: tuple[str, ...] = ("aml-events:4",)) -> None:
        self.data_dir = data_dir
        self.hubs = hubs
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.connection_string = ""

    def start(self) -> None:
        args = [sys.executable, "-m", "worker", "dev-hub", "--port", str(self.port)]
        for hub in self.hubs:
            args += ["--hub", hub]
        args += ["--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        self.connection_string = self.process.stdout.readline().strip()
        assert self.connection_string.startswith("Endpoint=sb://"), self.connection_string
        wait_for_port(self.port)

    def hub_connection_string(self, hub: str = "aml-events") -> str:
        base = self.connection_string.split(";EntityPath=")[0].rstrip(";")
        return f"{base};EntityPath={hub}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def dev_hub(tmp_path) -> Iterator[DevHubProcess]:
    hub = DevHubProcess(tmp_path / "hub")
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def env(tmp_path, dev_hub, azurite) -> Iterator[Any]:
    """Worker processes on one hub and one container; none outlives the test."""
    from tests.workers import Env

    environment = Env(tmp_path, dev_hub, azurite)
    yield environment
    environment.close()
