"""`make demo`: the worker's main job on one machine, no cloud.

Starts Azurite and `aml-event-worker dev-hub` on loopback (both persisting under `.demo/`),
publishes `examples/stream.jsonl` keyed by subject, runs `aml-event-worker run` with
`examples/demo.rules.yaml` (log actions, and a webhook to a loopback receiver it starts)
until the hub is drained (`--stop-when-idle`), and prints what
happened. Run it again: the same sample is published again, the worker resumes from its
checkpoints, reads only the new copies and dispatches nothing — they are all duplicates.
Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".demo"
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports() -> dict[str, int]:
    """Stable ports across runs: checkpoint blob names contain the hub's host:port."""
    path = DATA / "ports.json"
    if path.exists():
        return json.loads(path.read_text())
    chosen = {"hub": free_port(), "blob": free_port()}
    path.write_text(json.dumps(chosen))
    return chosen


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: nothing listens on 127.0.0.1:{port}")


class Receiver(BaseHTTPRequestHandler):
    """The demo's webhook endpoint: prints what it receives."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        events = json.loads(body or b"[]")
        event = events[0] if isinstance(events, list) and events else {}
        print(
            f"   webhook received {event.get('eventType', '?')} {event.get('subject', '')} "
            f"(Idempotency-Key {self.headers.get('Idempotency-Key')}, "
            f"X-Demo-Model {self.headers.get('X-Demo-Model')})",
            flush=True,
        )
        self.send_response(202)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    DATA.mkdir(exist_ok=True)
    port = ports()
    worker = [sys.executable, "-m", "worker"]
    started: list[subprocess.Popen[bytes]] = []
    try:
        say(f"Azurite (blob checkpoints) on 127.0.0.1:{port['blob']}, data in .demo/azurite")
        (DATA / "azurite").mkdir(exist_ok=True)
        started.append(
            subprocess.Popen(
                [
                    str(AZURITE),
                    "--silent",
                    "--loose",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--location",
                    str(DATA / "azurite"),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(port["blob"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_port(port["blob"])
        say(f"dev-hub (Event Hubs on AMQP) on 127.0.0.1:{port['hub']}, data in .demo/hub")
        hub = subprocess.Popen(
            [*worker, "dev-hub", "--port", str(port["hub"]), "--data-dir", str(DATA / "hub")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(hub)  # type: ignore[arg-type]
        assert hub.stdout is not None
        connection = hub.stdout.readline().strip()
        print(connection)
        receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        say(f"webhook receiver on 127.0.0.1:{receiver.server_port}")
        env = {
            **os.environ,
            "DEMO_WEBHOOK_URL": f"http://127.0.0.1:{receiver.server_port}/hooks/aml",
            "AML_WORKER_EVENTHUB_CONNECTION_STRING": connection,
            "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING": (
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port['blob']}/devstoreaccount1;"
            ),
            "AML_WORKER_CREATE_CONTAINER": "true",
            "AML_WORKER_LOAD_BALANCING_INTERVAL": "1",
            "AML_WORKER_OWNERSHIP_EXPIRY": "5",
            "AML_WORKER_CHECKPOINT_INTERVAL": "1",
            "AML_WORKER_HTTP_PORT": "0",
            "AML_WORKER_HTTP_HOST": "127.0.0.1",
            "AML_WORKER_LOG_FORMAT": os.environ.get("AML_WORKER_LOG_FORMAT", "console"),
        }
        say("Publishing examples/stream.jsonl (partition key = subject)")
        subprocess.run(
            [*worker, "send", str(ROOT / "examples" / "stream.jsonl")], env=env, check=True
        )
        say("aml-event-worker run --rules examples/demo.rules.yaml --stop-when-idle 3")
        summary = DATA / "summary.json"
        subprocess.run(
            [
                *worker,
                "run",
                "--rules",
                str(ROOT / "examples" / "demo.rules.yaml"),
                "--stop-when-idle",
                "3",
                "--summary-json",
                str(summary),
            ],
            env=env,
            check=True,
        )
        counts = json.loads(summary.read_text())
        say("What happened")
        outcomes = ("foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched")
        print(f"messages read        {counts['messages']}  (invalid: {counts['invalid']})")
        print(f"events               {counts['events']}")
        for name in outcomes:
            print(f"  {name:<18} {counts[name]}")
        print(f"actions dispatched   {counts['actions_dispatched']}")
        print(f"dead letters         {counts['dead_letters']}")
        print(f"checkpoints written  {counts['checkpoints_written']}")
        if counts["actions_dispatched"] == 0 and counts["duplicate"]:
            print("\nNothing dispatched: every event was already handled by an earlier run.")
        else:
            print("\nRun `make demo` again: the same sample is published again and all of it")
            print("is recognised as duplicates. `rm -rf .demo` starts from scratch.")
        return 0
    finally:
        for process in reversed(started):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
