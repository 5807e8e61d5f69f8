"""What every bench shares: machine facts, result files, loopback servers, synthetic traffic.

A figure means little without the machine, the library versions and the command that made
it, so every result file carries them (`write_result`). The servers are the ones the tests
use — Azurite and our own `dev-hub` — started on free loopback ports and stopped whatever
happens. Nothing here talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = (  # the public, well-known development storage key
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
WORKER = [sys.executable, "-m", "worker"]
TOPIC = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-ml-prod/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-ml-prod"
)
RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"
FAMILIES = ("forecast", "churn", "fraud", "vision", "nlp")
STATUSES = ("Queued", "Running", "Completed", "Failed")
LIBRARIES = (
    "aml-event-worker",
    "azure-eventhub",
    "azure-eventhub-checkpointstoreblob-aio",
    "azure-storage-blob",
    "azure-core",
    "python-qpid-proton",
    "structlog",
)


# --- facts -----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """HEAD, with `+dirty` when the work tree differs: figures belong to a code state."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_facts() -> dict[str, Any]:
    """The machine and software a figure was measured on."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    azurite = None
    with contextlib.suppress(OSError, ValueError):
        package = ROOT / "node_modules" / "azurite" / "package.json"
        azurite = json.loads(package.read_text())["version"]
    versions["azurite"] = azurite
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def command_line() -> str:
    """How this bench was started, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def write_result(results: Path, name: str, figures: dict[str, Any]) -> Path:
    """`results/<name>.json`: the figures plus command, date and machine facts."""
    results.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": name,
        "command": command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        **figures,
    }
    path = results / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


# --- servers on loopback ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def _stop(process: subprocess.Popen[Any], *, group: bool) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
        process.wait(15)


class Azurite:
    """Azurite's blob service in memory; with `access_log` its request log goes to a file
    (one line per request, `"PUT /devstoreaccount1/<container>/<blob>?comp=... HTTP/1.1"`),
    which is how the storage server itself counts our writes."""

    def __init__(self, access_log: Path | None = None) -> None:
        if not AZURITE.exists():
            raise SystemExit("Azurite is not installed: run `make bench` (it runs npm install)")
        self.port = free_port()
        self.access_log = access_log
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )

    def __enter__(self) -> Azurite:
        args = [
            str(AZURITE), "--loose", "--skipApiVersionCheck", "--disableTelemetry",
            "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
        ]  # fmt: skip
        if self.access_log is None:
            args.append("--silent")
            out: Any = subprocess.DEVNULL
        else:
            self._log = out = open(self.access_log, "wb")
        self.process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            _stop(self.process, group=True)
        if self._log is not None:
            self._log.close()


class DevHub:
    """`aml-event-worker dev-hub` in memory; its first stdout line is the connection string."""

    def __init__(self, hub: str = "bench", partitions: int = 4) -> None:
        self.hub = hub
        self.partitions = partitions
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.connection_string = ""

    def __enter__(self) -> DevHub:
        self.process = subprocess.Popen(
            [
                *WORKER,
                "dev-hub",
                "--port",
                str(self.port),
                "--hub",
                f"{self.hub}:{self.partitions}",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("Endpoint=sb://"):
            _stop(self.process, group=False)
            raise RuntimeError(f"dev-hub did not start: {line!r}")
        self.connection_string = line
        wait_for_port(self.port)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            _stop(self.process, group=False)


def worker_env(hub: DevHub, azurite: Azurite, container: str, **extra: str) -> dict[str, str]:
    """Environment of an `aml-event-worker run` on this hub and container."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AML_WORKER_")}
    env.update(
        AML_WORKER_EVENTHUB_CONNECTION_STRING=hub.connection_string,
        AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING=azurite.connection_string,
        AML_WORKER_CHECKPOINT_CONTAINER=container,
        AML_WORKER_CREATE_CONTAINER="true",
        AML_WORKER_LOAD_BALANCING_INTERVAL="1",
        AML_WORKER_OWNERSHIP_EXPIRY="10",
        AML_WORKER_LOG_FORMAT="json",
        AML_WORKER_LOG_LEVEL="info",
        AML_WORKER_HTTP_HOST="127.0.0.1",
        AML_WORKER_HTTP_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def metrics(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """The worker's /metrics, summed over labels: {metric name: value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
        if 'result="done"' in name_labels and name == "aml_worker_actions_total":
            totals["actions_done"] = totals.get("actions_done", 0.0) + float(value)
    return totals


# --- traffic -----------------------------------------------------------------------------------


def bench_event(number: int, start: datetime) -> dict[str, Any]:
    """The `number`-th event of the synthetic stream: run status changes of many runs.

    Run `number // 4` goes Queued → Running → Completed/Failed-like statuses one second of
    event time apart, in five experiment families: each event matches exactly one of the
    twenty bench rules (family by status), so actions dispatched = events processed."""
    run = number // 4
    family = FAMILIES[run % len(FAMILIES)]
    status = STATUSES[number % 4]
    return {
        "topic": TOPIC,
        "subject": f"experiments/{family}-exp{run % 37}/runs/{family}_{run}",
        "eventType": RUN_STATUS,
        "eventTime": (start + timedelta(seconds=number)).isoformat().replace("+00:00", "Z"),
        "id": hashlib.sha256(f"bench-{start.isoformat()}-{number}".encode()).hexdigest()[:32],
        "data": {
            "experimentId": f"{run % 37:08d}-0000-0000-0000-000000000000",
            "experimentName": f"{family}-exp{run % 37}",
            "runId": f"{family}_{run}",
            "runType": "azureml.scriptrun",
            "runTags": {"team": family},
            "runProperties": {"mlflow.source.type": "JOB"},
            "runStatus": status,
        },
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def bench_rules(path: Path, *, grace: str = "5s") -> Path:
    """Twenty rules (five families by four statuses), each with a log action: every bench
    event matches exactly one. Filters use several operators, as real rules do."""
    lines = [
        "version: 1",
        f"topics: ['{TOPIC}']",
        f"ordering: {{grace: {grace}}}",
        "rules:",
    ]
    for family in FAMILIES:
        for status in STATUSES:
            lines += [
                f"  - name: {family}-{status.lower()}",
                "    filter:",
                f"      includedEventTypes: [{RUN_STATUS}]",
                f"      subjectBeginsWith: experiments/{family}-",
                "      advancedFilters:",
                f"        - {{operatorType: StringIn, key: data.runStatus, values: [{status}]}}",
                "        - {operatorType: IsNotNull, key: data.runId}",
                f"        - {{operatorType: StringBeginsWith, key: data.experimentName, "
                f"values: [{family}]}}",
                "    actions:",
                "      - type: log",
                f"        id: log-{family}-{status.lower()}",
                "        message: '{{ rule }}: {{ event.subject }} is {{ data.runStatus }}'",
            ]
    path.write_text("\n".join(lines) + "\n")
    return path


def partition_of(subject: str, partitions: int) -> str:
    """A stable partition per object, as the PartitionKey = subject set-up gives."""
    digest = hashlib.blake2b(subject.encode(), digest_size=4).digest()
    return str(int.from_bytes(digest, "big") % partitions)


async def send_bodies(connection_string: str, bodies: Sequence[tuple[str, bytes]]) -> int:
    """Send (partition id, body) pairs with the real producer, batched per partition."""
    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubProducerClient

    producer = EventHubProducerClient.from_connection_string(connection_string)
    by_partition: dict[str, list[bytes]] = {}
    for partition, body in bodies:
        by_partition.setdefault(partition, []).append(body)
    sent = 0
    async with producer:
        for partition, items in by_partition.items():
            batch = await producer.create_batch(partition_id=partition)
            for body in items:
                try:
                    batch.add(EventData(body))
                except ValueError:  # full
                    await producer.send_batch(batch)
                    sent += len(batch)
                    batch = await producer.create_batch(partition_id=partition)
                    batch.add(EventData(body))
            if len(batch):
                await producer.send_batch(batch)
                sent += len(batch)
    return sent


def stream(count: int, partitions: int, *, first: int = 0) -> list[tuple[str, bytes]]:
    """`count` bench events as (partition id, body), each object on one partition."""
    start = datetime(2026, 3, 2, tzinfo=UTC)
    items = []
    for number in range(first, first + count):
        event = bench_event(number, start)
        items.append((partition_of(event["subject"], partitions), json.dumps(event).encode()))
    return items


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """`with timed() as t:` then `t["s"]` is the wall time of the block."""
    result: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield result
    finally:
        result["s"] = time.perf_counter() - started
