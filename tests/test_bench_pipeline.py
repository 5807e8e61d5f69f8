"""bench/pipeline.py in its quick form: the result file's shape, and both paths agree (issue 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched")


def test_quick_pipeline_bench_writes_consistent_figures(tmp_path):
    """In-process `dry_run` and the `replay --dry-run` subprocess decode, match and plan the
    same synthetic stream identically, and every figure the README quotes is there."""
    # --events keeps this within the test budget on a busy 2-core machine; --quick alone is
    # the 50k-event form `bench/run.py --quick` uses.
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--quick", "--events", "5000",
         "--results", str(tmp_path)],
        check=True, cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    report = json.loads((tmp_path / "pipeline.json").read_text())

    assert report["command"].startswith("python bench/pipeline.py --quick")
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"].count(".") == 2
    assert machine["libraries"]["msgspec"] and machine["libraries"]["jinja2"]
    assert report["stream"]["events"] == 5000 and report["stream"]["rules"] == 20
    assert report["decoders"]["json_us_per_message"] > 0
    assert report["decoders"]["msgspec_us_per_message"] > 0

    after = report["after"]
    in_process, file_replay = after["in_process"]["counts"], after["file_replay"]["counts"]
    assert in_process == file_replay
    # Duplicates and batches make events exceed the 5000 generated; every one has an outcome.
    assert in_process["events"] > 5000
    assert sum(in_process[name] for name in OUTCOMES) == in_process["events"]
    assert in_process["duplicate"] > 0 and in_process["invalid"] > 0
    assert in_process["matched"] > 0 and in_process["planned"] > 0
    for path in ("in_process", "file_replay"):
        figures = after[path]
        assert figures["events_per_second"] > 0 and figures["events_per_cpu_second"] > 0
        assert figures["peak_rss_bytes"] > 10_000_000  # an interpreter at least
    state = after["in_process"]["state"]
    assert state["snapshot_bytes"] > 0 and state["delta_5s_bytes"] > 0
    assert 0 < state["remembered_ids"] <= in_process["events"]
    assert "memory" not in after  # the 1/10 vs full comparison is for the full run only
