"""Time the file dry-run replay on a synthetic Azure ML stream (issue 2's performance note).

    python bench/replay_file.py --events 100000 [--rules examples/rules.yaml]

Writes a JSON-lines stream of realistic events (run status changes over many runs, shuffled
within a few seconds, 1% duplicates), replays it through `aml-event-worker replay --dry-run`
as a subprocess, and records wall time and rate in bench/results/replay_file.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPIC = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-ml-prod/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-ml-prod"
)
STATUSES = ["Queued", "Preparing", "Running", "Finalizing", "Completed", "Failed"]


def synthetic_stream(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    lines: list[tuple[float, str]] = []
    for i in range(count):
        run = f"train_{i // 6}"
        moment = start + timedelta(milliseconds=i * 50)
        event = {
            "topic": TOPIC,
            "subject": f"experiments/e{(i // 6) % 50}/runs/{run}",
            "eventType": "Microsoft.MachineLearningServices.RunStatusChanged",
            "eventTime": moment.isoformat().replace("+00:00", "Z"),
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "data": {
                "experimentName": f"exp-{(i // 6) % 50}",
                "runId": run,
                "runStatus": STATUSES[i % 6],
                "runTags": {"team": "ml"},
            },
            "dataVersion": "2",
            "metadataVersion": "1",
        }
        body = json.dumps(event)
        lines.append((i + rng.uniform(0, 40), body))  # shuffled within ~2 s of event time
        if rng.random() < 0.01:
            lines.append((i + rng.uniform(0, 200), body))  # redelivery
    lines.sort(key=lambda item: item[0])
    return [body for _, body in lines]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rules", default=str(ROOT / "examples" / "rules.yaml"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "replay_file.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "stream.jsonl"
        stream.write_text("\n".join(synthetic_stream(args.events)) + "\n")
        summary = Path(tmp) / "summary.json"
        command = [
            sys.executable, "-m", "worker", "replay", "--rules", args.rules,
            "--source", f"file:{stream}", "--dry-run", "--output", str(Path(tmp) / "plan.jsonl"),
            "--summary-json", str(summary),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        counts = json.loads(summary.read_text())
    result = {
        "command": f"python bench/replay_file.py --events {args.events}",
        "messages": counts["messages"],
        "planned": counts["planned"],
        "seconds": round(elapsed, 2),
        "messages_per_second": round(counts["messages"] / elapsed),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": datetime.now(UTC).date().isoformat(),
    }
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
