"""Every bench in one go, so the figures are ratios from one run on one machine (`make bench`).

    python bench/run.py [--quick] [--results DIR] [--only NAME,...] [--skip NAME,...]

Runs, each in its own process and in this order (quietest first): `startup`, `pipeline`
(the pure pipeline and memory, bench/pipeline.py), `throughput` (raw SDK vs `run`),
`checkpoints` (blob writes per partition per minute). Each writes `<DIR>/<name>.json`;
this script adds `<DIR>/run.json` (what ran, exit codes, durations) and
`<DIR>/summary.md` (the README's Performance table) and prints the headline figures.
Exit code 1 when any bench failed; the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, write_result

BENCHES = ("startup", "pipeline", "throughput", "checkpoints")
TIMEOUT_S = {"startup": 300, "pipeline": 600, "throughput": 900, "checkpoints": 600}


def names(text: str | None) -> set[str]:
    chosen = {n.strip() for n in text.split(",") if n.strip()} if text else set()
    unknown = chosen - set(BENCHES)
    if unknown:
        raise SystemExit(f"unknown bench(es): {', '.join(sorted(unknown))}; know {BENCHES}")
    return chosen


def headline(name: str, results: Path) -> str:
    """One line per bench from its result file (empty when it has none)."""
    path = results / f"{name}.json"
    if not path.exists():
        return ""
    figures: dict[str, Any] = json.loads(path.read_text())
    if name == "startup":
        return ", ".join(
            f"{key} {figures[key]['median_s']} s"
            for key in ("help", "check_rules_examples", "check_rules_20_rules")
            if key in figures
        )
    if name == "throughput":
        return (
            f"raw {figures['raw_events_per_second']}/s, ours {figures['ours_events_per_second']}"
            f"/s = {figures['ours_vs_raw']:.0%} of raw (goal ≥ 90%); dev-hub bottleneck: "
            f"{figures['dev_hub']['is_bottleneck']}"
        )
    if name == "checkpoints":
        return (
            "; ".join(
                f"{p['offered_events_per_second']}/s offered ({p['consumed_events_per_second']}/s "
                f"consumed): {p['max_writes_per_partition_per_minute']} writes/partition/min"
                for p in figures["phases"]
            )
            + f" (bound {figures['bound_writes_per_partition_per_minute']})"
        )
    # Another bench's own format: its rates and peak memory, wherever they are nested.
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else key)
        elif path.endswith(("events_per_second", "peak_rss_bytes")) and "machine" not in path:
            found.append(f"{path}={value}")

    walk(figures, "")
    return ", ".join(found)[:300]


def markdown(results: Path) -> str:
    """The figures as the README's Performance table (what the lead pastes after a quiet run)."""

    def load(name: str) -> dict[str, Any] | None:
        path = results / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    rows = ["| figure | measured | goal |", "| --- | --- | --- |"]
    machine = None
    throughput = load("throughput")
    if throughput:
        machine = throughput["machine"]
        hub = throughput["dev_hub"]
        rows.append(
            f"| raw SDK receive, {throughput['events']:,} events, {throughput['partitions']} "
            f"partitions | {throughput['raw_events_per_second']:,} events/s "
            f"({throughput['raw_cpu_us_per_event']} µs CPU/event) | |"
        )
        rows.append(
            f"| `run`, {throughput['rules']} rules, `log` action to /dev/null | "
            f"{throughput['ours_events_per_second']:,} events/s = "
            f"**{throughput['ours_vs_raw']:.0%} of raw** "
            f"({throughput['ours_cpu_us_per_event']} µs CPU/event) | ≥ 90 % |"
        )
        pair = hub.get("two_consumers_events_per_second")
        rows.append(
            f"| dev-hub while serving raw | {hub['core_share_during_raw']:.0%} of a core"
            + (f"; two consumers at once: {pair:,} events/s" if pair else "")
            + f"; bottleneck: {'yes' if hub['is_bottleneck'] else 'no'} | |"
        )
    checkpoints = load("checkpoints")
    if checkpoints:
        machine = machine or checkpoints["machine"]
        bound = checkpoints["bound_writes_per_partition_per_minute"]
        for phase in checkpoints["phases"]:
            rows.append(
                f"| blob writes per partition per minute, "
                f"{phase['offered_events_per_second']:,} events/s offered "
                f"({phase['consumed_events_per_second']:,} consumed) | "
                f"{phase['max_writes_per_partition_per_minute']} "
                f"({phase['max_requests_per_partition_per_minute']} requests with Put Block) | "
                f"≤ {bound:g} |"
            )
    startup = load("startup")
    if startup:
        machine = machine or startup["machine"]
        labels = {
            "help": "`aml-event-worker --help`",
            "check_rules_examples": "`check-rules examples/rules.yaml`",
            "check_rules_20_rules": "`check-rules` (20 rules)",
        }
        for key, label in labels.items():
            if key in startup:
                f = startup[key]
                rows.append(
                    f"| {label} | {f['median_s']} s wall, {f['median_cpu_s']} s CPU "
                    f"(median of {f['runs']}); azure-ai-ml "
                    f"{'imported' if f['azure_ai_ml_imported'] else 'not imported'} | < 0.3 s |"
                )
    if machine:
        v = machine["versions"]
        rows.append("")
        rows.append(
            f"Measured on {machine['cpu']}, {machine['cores']} cores (load average "
            f"{machine['load_average_at_start'][0]} at start), Python {machine['python']}, "
            f"azure-eventhub {v['azure-eventhub']}, azure-storage-blob {v['azure-storage-blob']}, "
            f"Azurite {v['azurite']}, commit {machine['git_commit']}."
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small forms of every bench")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--skip", help="comma-separated benches to leave out")
    args = parser.parse_args(argv)
    only, skip = names(args.only), names(args.skip)
    args.results.mkdir(parents=True, exist_ok=True)
    ran: list[dict[str, Any]] = []
    failed = False
    for name in BENCHES:
        if (only and name not in only) or name in skip:
            continue
        script = ROOT / "bench" / f"{name}.py"
        if not script.exists():
            print(f"== {name}: {script.relative_to(ROOT)} is missing, skipped", flush=True)
            ran.append({"bench": name, "status": "missing"})
            continue
        command = [sys.executable, str(script), "--results", str(args.results)]
        if args.quick:
            command.append("--quick")
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            code = subprocess.run(command, cwd=ROOT, timeout=TIMEOUT_S[name]).returncode
        except subprocess.TimeoutExpired:
            code = -1
            print(f"== {name}: timed out after {TIMEOUT_S[name]} s", flush=True)
        seconds = round(time.monotonic() - started, 1)
        failed |= code != 0
        ran.append({"bench": name, "exit_code": code, "seconds": seconds})
    write_result(args.results, "run", {"quick": args.quick, "benches": ran})
    table = markdown(args.results)
    (args.results / "summary.md").write_text(table)
    print("\n== figures")
    for entry in ran:
        if entry.get("exit_code") == 0:
            print(f"{entry['bench']:12} {headline(entry['bench'], args.results)}")
        else:
            print(f"{entry['bench']:12} {entry.get('status') or 'FAILED'}")
    print(f"\n{table}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
