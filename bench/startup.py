"""Start-up wall time of the command line (goal < 0.3 s; azure-ai-ml imported lazily).

    python bench/startup.py [--quick] [--results DIR] [--repeat K]

Runs the installed console script (`.venv/bin/aml-event-worker`, as users and CI call it)
K times per command — `--help`, `check-rules` on the example rules (every action type) and
on the twenty bench rules — and records min and median wall time. One more run of each
under `python -X importtime` lists the slowest imports and shows whether `azure.ai.ml`
(≈ 1.2 s to import) was loaded at all.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_rules, write_result

GOAL_S = 0.3


def console_script() -> list[str]:
    """The console script next to this interpreter, else `python -m worker`."""
    script = Path(sys.executable).with_name("aml-event-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]


def timed_runs(
    args: list[str], repeat: int, env: dict[str, str]
) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (user + system) of `repeat` runs. On a shared machine the
    CPU time is the steadier figure: waiting for a core shows in wall time only."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=120)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            raise RuntimeError(f"{args} exited {result.returncode}: {result.stderr[-500:]!r}")
    return walls, cpus


def imports(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """What one run imports: module count, the slowest top-level imports, azure.ai.ml?"""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", *args[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules: list[tuple[int, str, bool]] = []  # (cumulative µs, name, top level?)
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative, name = line.removeprefix("import time:").split("|", 2)
        modules.append((int(cumulative), name.strip(), len(name) - len(name.lstrip()) <= 1))
    top = [
        {"module": name, "cumulative_ms": round(us / 1000, 1)}
        for us, name, top_level in sorted(modules, reverse=True)
        if top_level
    ][:6]
    return {
        "modules_imported": len(modules),
        "azure_ai_ml_imported": any(name == "azure.ai.ml" for _, name, _ in modules),
        "slowest_top_level_imports": top,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast form (tests)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--repeat", type=int, help="runs per command (default 15, quick 3)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 15)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AML_WORKER_")}
    script = console_script()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        rules20 = bench_rules(Path(tmp) / "rules20.yaml")
        commands = {
            "help": [*script, "--help"],
            "check_rules_examples": [
                *script,
                "check-rules",
                str(ROOT / "examples" / "rules.yaml"),
                "--allow-missing-secrets",
            ],
            "check_rules_20_rules": [*script, "check-rules", str(rules20)],
        }
        figures: dict[str, Any] = {}
        for name, command in commands.items():
            times, cpus = timed_runs(command, repeat, env)
            python_args = ["python", *command[len(script) :]]
            figures[name] = {
                "args": command[len(script) :],
                "runs": repeat,
                "min_s": round(min(times), 3),
                "median_s": round(statistics.median(times), 3),
                "median_cpu_s": round(statistics.median(cpus), 3),
                "meets_goal": statistics.median(times) < GOAL_S,
                **imports(python_args, env),
            }
    path = write_result(
        args.results,
        "startup",
        {"quick": args.quick, "goal_s": GOAL_S, "console_script": script[0], **figures},
    )
    for name in commands:
        f = figures[name]
        print(
            f"startup: {name}: median {f['median_s']} s (min {f['min_s']} s, CPU "
            f"{f['median_cpu_s']} s), "
            f"azure.ai.ml imported: {f['azure_ai_ml_imported']}"
        )
    print(f"startup → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
