"""The pure pipeline bench (issue 7): decode → dedupe → order → match → plan, on one core.

    python bench/pipeline.py [--quick] [--events N] [--results DIR] [--before COMMIT]

Writes a synthetic Azure ML stream (both schemas, the five event types over 10k objects,
redeliveries, shuffles, a few late and invalid messages, event times spanning many dedupe
windows) and a rules file of 20 rules with `log` actions, then measures:

- *in-process*: `worker.replay.dry_run` over the file, plan to /dev/null, timed around the
  call only (no interpreter start, no rules load), in a fresh process;
- *file replay*: `aml-event-worker replay --source file:… --dry-run --output /dev/null` as a
  subprocess, timed end to end, with its peak RSS (`wait4`);
- *memory*: the file replay's peak RSS at 1/10 of the events and at all of them — both well
  past the dedupe window, so bounded state means the two stay within ±10 %;
- *state*: the size of a state save (snapshot and a 5 s delta, encoded as `run` saves them)
  at steady state, and how many ids / objects it remembers.

`--before COMMIT` also runs the same measurements against that commit's `worker/` (exported
with `git archive` into a temporary directory), so before/after figures come from the same
stream on the same machine. Results: DIR/pipeline.json (`--quick` = 50k events, < 20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import inspect
import io
import json
import os
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOPIC = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-ml-prod/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-ml-prod"
)
FOREIGN_TOPIC = TOPIC.replace("ws-ml-prod", "ws-ml-dev")
AML = "Microsoft.MachineLearningServices."
EVENTS_PER_SECOND = 100  # of event time: 1M events span 2.8 h, i.e. 33 dedupe windows
DEDUPE_WINDOW = "5m"
WINDOW_EVENTS = 5 * 60 * EVENTS_PER_SECOND
OBJECTS = 10_000
STATUSES = ("Queued", "Preparing", "Running", "Finalizing", "Completed", "Failed", "Canceled")
LIBRARIES = ("jinja2", "structlog", "ruamel.yaml", "orjson", "msgspec")

RULES_YAML = f"""\
# 20 rules with `log` actions over the five Azure ML event types (bench/pipeline.py).
version: 1
topics: ['{TOPIC}']
ordering: {{grace: 5s, late: drop, max_skew: 5m}}
dedupe: {{window: {DEDUPE_WINDOW}}}
rules:
  - name: run-failed
    filter:
      includedEventTypes: [{AML}RunStatusChanged]
      subjectBeginsWith: experiments/
      advancedFilters:
        - {{operatorType: StringIn, key: data.runStatus, values: [Failed, Canceled]}}
    actions:
      - {{type: log, id: say, level: warning,
          message: "{{{{ data.experimentName }}}}: {{{{ data.runId }}}} {{{{ data.runStatus }}}}"}}
  - name: run-started
    filter:
      includedEventTypes: [{AML}RunStatusChanged]
      advancedFilters:
        - {{operatorType: StringIn, key: data.runStatus, values: [Running]}}
        - {{operatorType: StringContains, key: data.runType, values: [scriptrun]}}
    actions:
      - {{type: log, message: "run started"}}
  - name: run-completed-risk
    filter:
      includedEventTypes: [{AML}RunCompleted]
      advancedFilters:
        - {{operatorType: StringBeginsWith, key: data.experimentName, values: [credit-risk]}}
    actions:
      - {{type: log, message: "{{{{ rule }}}}: {{{{ event.subject }}}} at {{{{ event.time }}}}"}}
  - name: run-manual
    filter:
      includedEventTypes: [{AML}RunStatusChanged, {AML}RunCompleted]
      advancedFilters:
        - {{operatorType: StringIn, key: data.runTags.trigger, values: [manual]}}
    actions:
      - {{type: log, level: debug, message: "manual run {{{{ data.runId }}}}"}}
  - name: run-not-scheduled-completed
    filter:
      includedEventTypes: [{AML}RunCompleted]
      advancedFilters:
        - {{operatorType: StringNotIn, key: data.runTags.trigger, values: [schedule]}}
    actions:
      - {{type: log, message: "unscheduled run done"}}
  - name: pipeline-runs
    filter:
      includedEventTypes: [{AML}RunStatusChanged, {AML}RunCompleted]
      subjectBeginsWith: experiments/
      advancedFilters:
        - {{operatorType: StringEndsWith, key: data.runType, values: [.pipelinerun]}}
    actions:
      - {{type: log, message: "{{{{ data.runType }}}} {{{{ data.runId }}}}"}}
  - name: supply-team
    filter:
      includedEventTypes: [{AML}RunStatusChanged, {AML}RunCompleted]
      advancedFilters:
        - {{operatorType: StringIn, key: data.runTags.team, values: [supply]}}
        - {{operatorType: StringNotContains, key: data.experimentName, values: [sandbox]}}
    actions:
      - {{type: log, message: "supply {{{{ event.type }}}}"}}
  - name: runs-ending-0
    filter:
      includedEventTypes: [{AML}RunStatusChanged]
      subjectEndsWith: "0"
      advancedFilters:
        - {{operatorType: IsNullOrUndefined, key: data.runTags.owner}}
    actions:
      - {{type: log, message: "sampled"}}
  - name: model-production
    filter:
      includedEventTypes: [{AML}ModelRegistered]
      subjectBeginsWith: models/
      advancedFilters:
        - {{operatorType: StringIn, key: data.ModelTags.stage, values: [production]}}
    actions:
      - {{type: log, id: deploy, message: "{{{{ data.ModelName }}}}:{{{{ data.ModelVersion }}}}"}}
  - name: model-version-high
    filter:
      includedEventTypes: [{AML}ModelRegistered]
      advancedFilters:
        - {{operatorType: NumberGreaterThan, key: data.ModelVersion, value: 10}}
    actions:
      - {{type: log, message: "many versions of {{{{ data.ModelName }}}}"}}
  - name: model-version-ranges
    filter:
      includedEventTypes: [{AML}ModelRegistered]
      advancedFilters:
        - {{operatorType: NumberInRange, key: data.ModelVersion, values: [[1, 3], [7, 9]]}}
        - {{operatorType: BoolEquals, key: data.ModelProperties.approved, value: true}}
    actions:
      - {{type: log, message: "approved"}}
  - name: deployed-aks
    filter:
      includedEventTypes: [{AML}ModelDeployed]
      subjectBeginsWith: endpoints/
      advancedFilters:
        - {{operatorType: StringIn, key: data.ServiceComputeType, values: [AKS]}}
        - {{operatorType: IsNotNull, key: data.ServiceTags.stage}}
    actions:
      - {{type: log, message: "{{{{ data.ServiceName }}}} on AKS"}}
  - name: deployed-credit-risk
    filter:
      includedEventTypes: [{AML}ModelDeployed]
      advancedFilters:
        - {{operatorType: StringContains, key: data.ModelIds, values: [credit-risk-model]}}
    actions:
      - {{type: log, message: "credit risk deployed: {{{{ data.ModelIds }}}}"}}
  - name: drift-high
    filter:
      includedEventTypes: [{AML}DatasetDriftDetected]
      advancedFilters:
        - {{operatorType: NumberGreaterThanOrEquals, key: data.DriftCoefficient, value: 0.5}}
    throttle: {{per: object, at_most: 1, every: 1h}}
    actions:
      - {{type: log, id: retrain, level: warning,
          message: "retrain: {{{{ data.DataDriftName }}}} {{{{ data.DriftCoefficient }}}}"}}
  - name: drift-moderate
    filter:
      includedEventTypes: [{AML}DatasetDriftDetected]
      advancedFilters:
        - {{operatorType: NumberInRange, key: data.DriftCoefficient, values: [[0.3, 0.5]]}}
    actions:
      - {{type: log, message: "refresh features for {{{{ data.TargetDatasetId }}}}"}}
  - name: drift-low
    filter:
      includedEventTypes: [{AML}DatasetDriftDetected]
      advancedFilters:
        - {{operatorType: NumberLessThan, key: data.DriftCoefficient, value: 0.05}}
    actions:
      - {{type: log, level: debug, message: "no drift"}}
  - name: drift-named
    filter:
      includedEventTypes: [{AML}DatasetDriftDetected]
      subjectBeginsWith: datadrift/
      advancedFilters:
        - {{operatorType: StringBeginsWith, key: data.DataDriftName, values: [credit-risk, demand]}}
        - {{operatorType: NumberNotIn, key: data.DriftCoefficient, values: [0, 1]}}
    actions:
      - {{type: log, message: "{{{{ data.DataDriftName }}}}"}}
  - name: not-credit-risk-aci
    ordering: {{late: deliver}}
    filter:
      includedEventTypes: [{AML}ModelDeployed, {AML}DatasetDriftDetected]
      advancedFilters:
        - {{operatorType: StringNotBeginsWith, key: subject, values: [endpoints/credit-risk]}}
        - {{operatorType: StringNotIn, key: data.ServiceComputeType, values: [ACI]}}
    actions:
      - {{type: log, message: "{{{{ event.type }}}} {{{{ event.subject }}}} {{{{ event.late }}}}"}}
  - name: risk-everything
    filter:
      includedEventTypes: [{AML}RunStatusChanged, {AML}RunCompleted, {AML}ModelRegistered]
      advancedFilters:
        - {{operatorType: StringIn, key: data.runTags.team, values: [risk]}}
        - {{operatorType: StringNotEndsWith, key: data.runId, values: [_debug]}}
    throttle: {{per: rule, at_most: 100, every: 1m}}
    actions:
      - {{type: log, message: "risk {{{{ event.id }}}}"}}
      - {{type: log, id: audit, level: debug, message: "audit"}}
  - name: cloudevents-audit
    filter:
      includedEventTypes: [{AML}RunCompleted, {AML}ModelDeployed]
      advancedFilters:
        - {{operatorType: StringIn, key: specversion, values: ["1.0"]}}
    actions:
      - {{type: log, message: "{{{{ event.schema }}}} {{{{ event.id }}}}"}}
"""


# --- the synthetic stream ---------------------------------------------------------------------


def _objects(rng: random.Random) -> list[dict[str, Any]]:
    """10k objects: 60 % runs, 20 % models, 10 % endpoints, 10 % drift monitors."""
    experiments = [
        (str(uuid.UUID(int=rng.getrandbits(128))), f"{name}-{n}")
        for n in range(10)
        for name in ("credit-risk-train", "demand-forecast-train", "churn-train", "sandbox")
    ]
    objects: list[dict[str, Any]] = []
    for n in range(OBJECTS):
        kind = n % 10
        if kind < 6:
            exp_id, exp_name = rng.choice(experiments)
            run_id = f"{exp_name}_{1772442000 + n}_{rng.getrandbits(32):08x}"
            objects.append(
                {
                    "kind": "run",
                    "subject": f"experiments/{exp_id}/runs/{run_id}",
                    "status": 0,
                    "data": {
                        "experimentId": exp_id,
                        "experimentName": exp_name,
                        "runId": run_id,
                        "runType": rng.choice(
                            ["azureml.scriptrun"] * 6 + ["azureml.pipelinerun", "azureml.automl"]
                        ),
                        "runTags": {
                            "team": rng.choice(["risk", "supply", "growth"]),
                            "trigger": rng.choice(["schedule"] * 5 + ["manual"]),
                        },
                        "runProperties": {
                            "ContentSnapshotId": str(uuid.UUID(int=rng.getrandbits(128))),
                            "_azureml.ComputeTargetType": "amlctrain",
                        },
                    },
                }
            )
        elif kind < 8:
            name = rng.choice(["credit-risk-model", "demand-model", "churn-model"])
            version = rng.randint(1, 15)
            objects.append(
                {
                    "kind": "model",
                    "subject": f"models/{name}:{version}",
                    "data": {
                        "ModelName": name,
                        "ModelVersion": version,
                        "ModelTags": {"stage": rng.choice(["production", "staging"]), "team": "ml"},
                        "ModelProperties": {"approved": rng.random() < 0.5, "auc": "0.87"},
                    },
                }
            )
        elif kind == 8:
            service = f"{rng.choice(['credit-risk', 'demand', 'churn'])}-online-{n}"
            tags = {"team": "ml", "stage": "production"} if rng.random() < 0.7 else {"team": "ml"}
            objects.append(
                {
                    "kind": "endpoint",
                    "subject": f"endpoints/{service}",
                    "data": {
                        "ServiceName": service,
                        "ServiceComputeType": rng.choice(["AKS", "ACI", "Managed"]),
                        "ModelIds": f"{service.rsplit('-online', 1)[0]}-model:5",
                        "ServiceTags": tags,
                        "ServiceProperties": {"owner": "ml"},
                    },
                }
            )
        else:
            monitor = str(uuid.UUID(int=rng.getrandbits(128)))
            objects.append(
                {
                    "kind": "drift",
                    "subject": f"datadrift/{monitor}/run/{monitor}_{1772456400000 + n}",
                    "data": {
                        "DataDriftId": monitor,
                        "DataDriftName": f"{rng.choice(['credit-risk', 'demand', 'churn'])}-drift",
                        "RunId": f"{monitor}_{1772456400000 + n}",
                        "BaseDatasetId": str(uuid.UUID(int=rng.getrandbits(128))),
                        "TargetDatasetId": str(uuid.UUID(int=rng.getrandbits(128))),
                        "DriftCoefficient": 0.0,
                        "StartTime": "2026-03-01T00:00:00+00:00",
                        "EndTime": "2026-03-02T00:00:00+00:00",
                    },
                }
            )
    return objects


_TYPES = {"model": "ModelRegistered", "endpoint": "ModelDeployed", "drift": "DatasetDriftDetected"}


def _event(obj: dict[str, Any], rng: random.Random, ticks: int) -> tuple[str, dict[str, Any]]:
    """One event of an object, in the Event Grid (70 %) or CloudEvents (30 %) schema."""
    data = dict(obj["data"])
    if obj["kind"] == "run":
        if rng.random() < 0.15:
            event_type = "RunCompleted"
        else:
            event_type = "RunStatusChanged"
            data["runStatus"] = STATUSES[obj["status"] % len(STATUSES)]
            obj["status"] += 1
    else:
        event_type = _TYPES[obj["kind"]]
        if obj["kind"] == "drift":
            data["DriftCoefficient"] = round(rng.random(), 3)
    seconds, fraction = divmod(ticks, 10_000_000)
    stamp = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%S"
    )
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    topic = FOREIGN_TOPIC if rng.random() < 0.002 else TOPIC
    if rng.random() < 0.7:
        return event_id, {
            "topic": topic,
            "subject": obj["subject"],
            "eventType": AML + event_type,
            "eventTime": f"{stamp}.{fraction:07d}Z",
            "id": event_id,
            "data": data,
            "dataVersion": "2",
            "metadataVersion": "1",
        }
    zone = "Z" if rng.random() < 0.5 else "+00:00"
    return event_id, {
        "source": topic,
        "subject": obj["subject"],
        "type": AML + event_type,
        "time": f"{stamp}.{fraction:07d}{zone}",
        "id": event_id,
        "data": data,
        "specversion": "1.0",
    }


def synthetic_stream(count: int, seed: int = 7) -> Iterator[bytes]:
    """`count` events as message bodies in arrival order, generated and shuffled lazily.

    Event i happens at start + i / EVENTS_PER_SECOND (plus up to 10 ms); it arrives up to a
    few seconds late (within grace), 0.3 % 10-30 s late (past grace: some are stale), 2 % are
    delivered twice within a minute (duplicates), 0.1 % again after more than the dedupe
    window (stale); 4 % of messages are arrays of 2-4 events; 0.05 % are not JSON.
    """
    rng = random.Random(seed)
    objects = _objects(rng)
    start = (
        (datetime(2026, 3, 2, 9, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
        // timedelta(microseconds=1)
        * 10
    )
    step = 10_000_000 // EVENTS_PER_SECOND
    pending: list[tuple[float, int, bytes]] = []  # (arrival position, tie-break, body)
    batch: list[bytes] = []
    batch_size = 0
    serial = 0
    for i in range(count):
        obj = objects[rng.randrange(OBJECTS)]
        _, event = _event(obj, rng, start + i * step + rng.randrange(step))
        body = json.dumps(event, separators=(",", ":")).encode()
        roll = rng.random()
        delay = 1_000 + rng.random() * 2_000 if roll < 0.003 else min(rng.expovariate(1 / 40), 400)
        heapq.heappush(pending, (i + delay, serial, body))
        serial += 1
        if roll > 0.98:
            heapq.heappush(pending, (i + rng.random() * 6_000, serial, body))
            serial += 1
        elif roll > 0.979:
            heapq.heappush(pending, (i + WINDOW_EVENTS + rng.random() * 3_000, serial, body))
            serial += 1
        while pending and pending[0][0] < i + 1:
            _, _, ready = heapq.heappop(pending)
            if batch_size:
                batch.append(ready)
                if len(batch) == batch_size:
                    yield b"[" + b",".join(batch) + b"]"
                    batch, batch_size = [], 0
            elif rng.random() < 0.04:
                batch, batch_size = [ready], rng.randint(2, 4)
            elif rng.random() < 0.0005:
                yield b'{"id": "truncated' + ready[:40]
            else:
                yield ready
    while pending:
        batch.append(heapq.heappop(pending)[2])
    for body in batch:
        yield body


def write_stream(path: Path, count: int) -> int:
    """Write the stream as JSON lines; returns the number of lines (messages)."""
    lines = 0
    with path.open("wb") as handle:
        for body in synthetic_stream(count):
            handle.write(body + b"\n")
            lines += 1
    return lines


# --- measurements -------------------------------------------------------------------------------


def in_process(rules: str, stream: str, probe_at: int) -> dict[str, Any]:
    """Runs inside a fresh interpreter (see `--in-process`): time `dry_run` alone.

    At message `probe_at` the state a `run` worker would save is encoded (outside the timed
    part): a snapshot, then a delta after 5 s more of event time.
    """
    import gc

    from worker import replay
    from worker.rules import load_rules
    from worker.source import read_jsonl
    from worker.state import encode_record

    ruleset = load_rules(rules, secrets="ignore")
    probe: dict[str, Any] = {}
    paused = 0.0
    supports_pipeline = "pipeline" in inspect.signature(replay.dry_run).parameters
    from worker.pipeline import PartitionPipeline

    pipeline = PartitionPipeline(ruleset)

    def save(kind: str) -> int:
        sequencer = pipeline.sequencer
        record = {
            "kind": kind,
            "sequencer": sequencer.snapshot() if kind == "snapshot" else sequencer.delta(),
            "throttle": pipeline.throttler.snapshot(),
        }
        return len(encode_record(record))

    def messages() -> Iterator[tuple[bytes, Any]]:
        nonlocal paused
        delta_at = probe_at + 5 * EVENTS_PER_SECOND
        for number, item in enumerate(read_jsonl(stream)):
            if supports_pipeline and number in (probe_at, delta_at):
                began = time.perf_counter()
                if number == probe_at:
                    probe["snapshot_bytes"] = save("snapshot")
                    probe["remembered_ids"] = pipeline.sequencer.remembered_ids
                    probe["remembered_objects"] = pipeline.sequencer.remembered_objects
                    probe["held"] = pipeline.sequencer.held
                    probe["throttle_windows"] = len(pipeline.throttler)
                else:
                    probe["delta_5s_bytes"] = save("delta")
                paused += time.perf_counter() - began
            yield item

    gc.collect()
    with open(os.devnull, "w") as plan, open(os.devnull, "w") as dead:
        started, cpu_started = time.perf_counter(), time.process_time()
        if supports_pipeline:
            summary = replay.dry_run(ruleset, messages(), plan, dead, pipeline=pipeline)
        else:
            summary = replay.dry_run(ruleset, messages(), plan, dead)
        elapsed = time.perf_counter() - started - paused
        cpu = time.process_time() - cpu_started - paused
    counts = summary.as_dict()
    return {
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "events_per_second": round(counts["events"] / elapsed),
        "events_per_cpu_second": round(counts["events"] / cpu),
        "counts": counts,
        "state": probe or None,
    }


def compare_decoders(stream: Path, sample: int = 20_000) -> dict[str, Any]:
    """Microseconds of CPU per message body to decode the stream's first bodies."""
    bodies = []
    with stream.open("rb") as handle:
        for line in handle:
            if len(bodies) == sample:
                break
            bodies.append(line.rstrip(b"\n"))
    decoders: dict[str, Any] = {"json": lambda body: json.loads(body.decode("utf-8"))}
    try:
        import msgspec

        decoders["msgspec"] = msgspec.json.Decoder().decode
    except ImportError:
        pass
    try:
        import orjson  # type: ignore[import-not-found]

        decoders["orjson"] = orjson.loads
    except ImportError:
        pass
    result: dict[str, Any] = {"messages": len(bodies)}
    for name, decode in decoders.items():
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for body in bodies:
                with contextlib.suppress(Exception):  # a few bodies are invalid on purpose
                    decode(body)
            best = min(best, time.process_time() - started)
        result[f"{name}_us_per_message"] = round(best / len(bodies) * 1e6, 2)
    return result


def _run_child(command: list[str], tree: Path) -> tuple[float, float, int]:
    """Run a command in `tree`: (wall seconds, CPU seconds, peak RSS in bytes)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "AML_WORKER_LOG_LEVEL": "error"}
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert child.stderr is not None
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors.decode(errors='replace')}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024  # Linux: KiB


def measure_in_process(tree: Path, rules: Path, stream: Path, probe_at: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        target = Path(out.name)
    try:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--in-process", str(rules),
            str(stream), str(target), str(probe_at),
        ]  # fmt: skip
        _, _, rss = _run_child(command, tree)
        result = json.loads(target.read_text())
    finally:
        target.unlink(missing_ok=True)
    result["peak_rss_bytes"] = rss
    return result


def measure_file_replay(tree: Path, rules: Path, stream: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        command = [
            sys.executable, "-m", "worker", "replay", "--rules", str(rules),
            "--source", f"file:{stream}", "--dry-run", "--output", os.devnull,
            "--dead-letter", os.devnull, "--summary-json", str(summary),
        ]  # fmt: skip
        elapsed, cpu, rss = _run_child(command, tree)
        counts = json.loads(summary.read_text())
    return {
        "seconds": round(elapsed, 3),
        "cpu_seconds": round(cpu, 3),
        "events_per_second": round(counts["events"] / elapsed),
        "events_per_cpu_second": round(counts["events"] / cpu),
        "messages_per_second": round(counts["messages"] / elapsed),
        "peak_rss_bytes": rss,
        "counts": counts,
    }


def _export_tree(commit: str, into: Path) -> Path:
    """`git archive COMMIT worker` unpacked into a directory (read-only on the repository)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "worker"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "libraries": versions,
    }


def measure(tree: Path, rules: Path, streams: dict[str, Path], events: int) -> dict[str, Any]:
    """Every figure for one worker tree."""
    probe_at = int(events * 0.8)  # in messages, which are fewer than events: batches
    result: dict[str, Any] = {
        "in_process": measure_in_process(tree, rules, streams["full"], probe_at),
        "file_replay": measure_file_replay(tree, rules, streams["full"]),
    }
    if "small" in streams:
        small = measure_file_replay(tree, rules, streams["small"])
        full = result["file_replay"]
        ratio = full["peak_rss_bytes"] / small["peak_rss_bytes"]
        result["memory"] = {
            "what": "peak RSS of the file replay (plan to /dev/null)",
            "small_events": small["counts"]["events"],
            "small_peak_rss_bytes": small["peak_rss_bytes"],
            "full_events": full["counts"]["events"],
            "full_peak_rss_bytes": full["peak_rss_bytes"],
            "ratio": round(ratio, 3),
            "within_10_percent": abs(ratio - 1) <= 0.10,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k events, no memory comparison")
    parser.add_argument("--events", type=int, help="events in the stream (default 1M)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"), metavar="DIR")
    parser.add_argument("--before", metavar="COMMIT", help="also measure this commit's worker/")
    parser.add_argument("--in-process", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        rules, stream, out, probe_at = args.in_process
        Path(out).write_text(json.dumps(in_process(rules, stream, int(probe_at))))
        return 0

    events = args.events or (50_000 if args.quick else 1_000_000)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    command = "python bench/pipeline.py" + (" --quick" if args.quick else "")
    if args.events:
        command += f" --events {events}"
    if args.before:
        command += f" --before {args.before}"
    with tempfile.TemporaryDirectory(prefix="aew-bench-") as tmp:
        rules = Path(tmp) / "bench.rules.yaml"
        rules.write_text(RULES_YAML)
        streams = {"full": Path(tmp) / "stream.jsonl"}
        started = time.perf_counter()
        messages = write_stream(streams["full"], events)
        if not args.quick:
            streams["small"] = Path(tmp) / "stream-small.jsonl"
            write_stream(streams["small"], events // 10)
        generated = time.perf_counter() - started
        report: dict[str, Any] = {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_facts(),
            "stream": {
                "events": events,
                "messages": messages,
                "bytes": streams["full"].stat().st_size,
                "objects": OBJECTS,
                "rules": 20,
                "event_time_span_s": events / EVENTS_PER_SECOND,
                "dedupe_window": DEDUPE_WINDOW,
                "generated_in_s": round(generated, 1),
            },
            "decoders": compare_decoders(streams["full"]),
            "after": measure(ROOT, rules, streams, events),
        }
        if args.before:
            before_tree = _export_tree(args.before, Path(tmp) / "before")
            report["before"] = {
                "commit": args.before,
                **measure(before_tree, rules, streams, events),
            }
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    target = results / "pipeline.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
