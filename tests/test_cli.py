"""The command line through its public interface: check-rules, explain, replay (DESIGN §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, TOPIC, eg
from worker.cli import main

SUMMARY_KEYS = [
    "messages", "events", "invalid", "foreign_topic", "unknown_type", "duplicate", "stale",
    "unmatched", "matched", "planned", "throttled", "render_errors",
]  # fmt: skip
OUTCOMES = ["foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched"]
PLAN_KEYS = {
    "rule", "action", "action_index", "event_id", "event_type", "subject",
    "idempotency_key", "late", "params",
}  # fmt: skip


def replay(tmp_path: Path, rules: Path, source: Path, *extra: str) -> tuple[int, dict, list]:
    plan = tmp_path / "plan.jsonl"
    summary = tmp_path / "summary.json"
    code = main(
        [
            "replay", "--rules", str(rules), "--source", f"file:{source}", "--dry-run",
            "--output", str(plan), "--summary-json", str(summary), *extra,
        ]
    )  # fmt: skip
    lines = [json.loads(line) for line in plan.read_text().splitlines()] if plan.exists() else []
    return code, json.loads(summary.read_text()) if summary.exists() else {}, lines


def write_rules(tmp_path: Path, body: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"version: 1\ntopics: ['{TOPIC}']\n{body}")
    return path


def test_shared_sample_stream_summary_matches_its_documentation(tmp_path, shared_samples):
    """../shared/samples/README.md documents these counts for grace 5s, every AML type."""
    expected = json.loads((shared_samples / "stream.expected.json").read_text())
    types = ", ".join(
        f"Microsoft.MachineLearningServices.{t}" for t in expected["counts"]["by_type"]
    )
    rules = write_rules(
        tmp_path,
        "ordering: {grace: 5s}\nrules:\n  - name: all\n"
        f"    filter: {{includedEventTypes: [{types}]}}\n"
        "    actions: [{type: log, message: '{{ event.id }}'}]\n",
    )
    code, summary, plan = replay(tmp_path, rules, shared_samples / "stream.jsonl")
    assert code == 0
    counts = expected["counts"]
    assert summary["messages"] == counts["messages"]
    assert summary["events"] == counts["events_decoded"]
    assert summary["invalid"] == counts["invalid_bodies"]
    assert summary["foreign_topic"] == counts["foreign_topic"]
    assert summary["duplicate"] == counts["duplicates"]
    assert summary["unknown_type"] == counts["unknown_type"]
    assert summary["stale"] == expected["ordering"]["grace_5s"]["stale"]
    assert summary["matched"] == expected["ordering"]["grace_5s"]["released"]
    assert len(plan) == summary["planned"] == summary["matched"]
    assert list(summary) == SUMMARY_KEYS
    assert sum(summary[k] for k in OUTCOMES) == summary["events"]
    stale_ids = set(expected["ordering"]["grace_5s"]["stale_ids"])
    assert not stale_ids & {line["event_id"] for line in plan}


def test_example_stream_through_example_rules(tmp_path, monkeypatch):
    """The project's own stream and rules give the counts examples/stream.expected.md states."""
    monkeypatch.delenv("DEPLOY_HOOK_TOKEN", raising=False)
    code, summary, plan = replay(tmp_path, EXAMPLES / "rules.yaml", EXAMPLES / "stream.jsonl")
    assert code == 0
    assert summary == {
        "messages": 39, "events": 39, "invalid": 1, "foreign_topic": 1, "unknown_type": 1,
        "duplicate": 5, "stale": 1, "unmatched": 22, "matched": 9, "planned": 10,
        "throttled": 0, "render_errors": 0,
    }  # fmt: skip
    assert {line["action"] for line in plan} == {
        "log", "webhook", "email", "aml_job", "eventhub", "adf_pipeline",
    }  # fmt: skip
    for line in plan:
        assert set(line) >= PLAN_KEYS
        assert len(line["idempotency_key"]) == 32
    text = (tmp_path / "plan.jsonl").read_text()
    assert "${" not in text and "***" in text  # secrets are masked, never needed
    (job,) = [line for line in plan if line["action"] == "aml_job"]
    assert job["job_name"] == "aew-" + job["idempotency_key"]
    assert job["studio_url"].startswith(f"https://ml.azure.com/runs/{job['job_name']}?wsid=")
    dead = (tmp_path / "plan.jsonl.deadletter.jsonl").read_text().splitlines()
    assert len(dead) == 1 and json.loads(dead[0])["source"]["line"] == 17


def test_plan_is_byte_identical_across_runs(tmp_path):
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.mkdir()
    second.mkdir()
    replay(first, EXAMPLES / "demo.rules.yaml", EXAMPLES / "stream.jsonl")
    replay(second, EXAMPLES / "demo.rules.yaml", EXAMPLES / "stream.jsonl")
    assert (first / "plan.jsonl").read_bytes() == (second / "plan.jsonl").read_bytes()
    assert (first / "plan.jsonl").stat().st_size > 0


def test_idempotency_key_is_the_documented_hash(tmp_path):
    import hashlib

    rules = write_rules(
        tmp_path,
        "rules:\n  - name: r\n    actions:\n"
        "      - {type: log, message: a}\n      - {type: log, id: stable, message: b}\n",
    )
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(eg("ev-1", topic=TOPIC.upper())) + "\n")
    _, _, plan = replay(tmp_path, rules, source)

    def key(part: str) -> str:
        text = f"{TOPIC.casefold()}\nev-1\nr\n{part}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    assert [p["idempotency_key"] for p in plan] == [key("0"), key("stable")]


def test_invalid_lines_and_render_errors_go_to_the_dead_letter_file(tmp_path):
    rules = write_rules(
        tmp_path,
        "rules:\n  - name: r\n    actions:\n      - {type: log, message: '{{ data.runId }}'}\n",
    )
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"\n".join(
            [
                json.dumps(eg("ok", data={"RUNID": "r-1"})).encode(),
                b"{not json",
                b"\xff\xfe",
                json.dumps(eg("no-run-id", subject="other")).encode(),
            ]
        )
        + b"\n"
    )
    dead_path = tmp_path / "dead.jsonl"
    code, summary, plan = replay(tmp_path, rules, source, "--dead-letter", str(dead_path))
    assert code == 0
    assert [p["params"]["message"] for p in plan] == ["r-1"]  # case-insensitive data lookup
    assert summary["invalid"] == 2 and summary["render_errors"] == 1
    dead = [json.loads(line) for line in dead_path.read_text().splitlines()]
    assert [d["kind"] for d in dead] == ["invalid_body", "invalid_body", "render_error"]
    assert dead[0]["source"]["line"] == 2 and dead[0]["body"] == "{not json"
    assert dead[1]["body_base64"] == "//4="
    assert dead[2]["event_id"] == "no-run-id" and "runId" in dead[2]["reason"]


def test_late_events_are_planned_only_for_rules_that_deliver_them(tmp_path):
    rules = write_rules(
        tmp_path,
        "ordering: {grace: 0s, late: drop}\nrules:\n"
        "  - name: keeps-late\n    ordering: {late: deliver}\n"
        "    actions: [{type: log, message: '{{ event.late }}'}]\n"
        "  - name: drops-late\n    actions: [{type: log, message: x}]\n",
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps(eg("new", time="2024-06-10T10:00:10Z"))
        + "\n"
        + json.dumps(eg("old", time="2024-06-10T10:00:00Z"))
        + "\n"
    )
    _, summary, plan = replay(tmp_path, rules, source)
    assert [(p["rule"], p["event_id"], p["late"]) for p in plan] == [
        ("keeps-late", "new", False),
        ("drops-late", "new", False),
        ("keeps-late", "old", True),
    ]
    assert plan[2]["params"]["message"] == "True"
    assert summary["stale"] == 1 and summary["matched"] == 1 and summary["planned"] == 3


def test_throttle_counts_skipped_actions_on_event_time(tmp_path):
    rules = write_rules(
        tmp_path,
        "ordering: {grace: 0s}\nrules:\n  - name: retrain\n"
        "    throttle: {per: rule, at_most: 1, every: 6h}\n"
        "    actions: [{type: log, message: a}, {type: log, message: b}]\n",
    )
    source = tmp_path / "in.jsonl"
    times = ["10:00", "11:00", "15:59", "16:01"]
    source.write_text(
        "".join(
            json.dumps(eg(f"d{i}", subject=f"s{i}", time=f"2024-06-10T{t}:00Z")) + "\n"
            for i, t in enumerate(times)
        )
    )
    _, summary, plan = replay(tmp_path, rules, source)
    assert sorted({p["event_id"] for p in plan}) == ["d0", "d3"]
    assert summary["throttled"] == 4 and summary["planned"] == 4 and summary["matched"] == 4


def test_output_dash_writes_the_plan_to_stdout(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AML_WORKER_RULES", str(EXAMPLES / "demo.rules.yaml"))
    code = main(["replay", "--source", f"file:{EXAMPLES / 'stream.jsonl'}", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    actions = Counter(json.loads(line)["action"] for line in lines)
    assert actions == {"log": 32, "webhook": 3}
    assert "replay summary:" in err and "planned=35" in err
    assert (tmp_path / "deadletter.jsonl").read_text().count("\n") == 1


def test_replay_refuses_an_invalid_rules_file_and_does_nothing(tmp_path, capsys):
    rules = write_rules(tmp_path, "rules:\n  - name: r\n    actions: [{type: log}]\n")
    code, summary, plan = replay(tmp_path, rules, EXAMPLES / "stream.jsonl")
    err = capsys.readouterr().err
    assert code == 1
    assert f"{rules}:5:15: log action needs 'message'" in err
    assert summary == {} and plan == []


def test_replay_without_rules_says_how_to_give_them(capsys, monkeypatch):
    monkeypatch.delenv("AML_WORKER_RULES", raising=False)
    code = main(["replay", "--source", "file:x.jsonl", "--dry-run"])
    assert code == 2 and "AML_WORKER_RULES" in capsys.readouterr().err


def test_replay_missing_source_file_fails_cleanly(tmp_path, capsys):
    code = main(
        ["replay", "--rules", str(EXAMPLES / "demo.rules.yaml"), "--source",
         f"file:{tmp_path / 'nope.jsonl'}", "--dry-run", "--output", str(tmp_path / "p")]
    )  # fmt: skip
    assert code == 1 and "not found" in capsys.readouterr().err


def test_check_rules_ok_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEPLOY_HOOK_TOKEN", raising=False)
    monkeypatch.setenv("DEMO_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert main(["check-rules", str(EXAMPLES / "demo.rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "OK" in out
    # The example file needs three secrets from the environment.
    assert main(["check-rules", str(EXAMPLES / "rules.yaml")]) == 1
    err = capsys.readouterr().err
    assert "secret ${DEPLOY_HOOK_TOKEN} is not set" in err
    assert main(["check-rules", "--allow-missing-secrets", str(EXAMPLES / "rules.yaml")]) == 0
    captured = capsys.readouterr()
    assert "warning: secret ${DEPLOY_HOOK_TOKEN}" in captured.err and "OK" in captured.out
    bad = write_rules(tmp_path, "rules:\n  - name: r\n    filter: {subjectBeginWith: x}\n")
    assert main(["check-rules", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert f"{bad}:5:14: unknown key 'subjectBeginWith'" in lines[0]
    assert any("needs a non-empty list 'actions'" in line for line in lines)


def test_explain_says_why_each_clause_passed_or_failed(tmp_path, capsys):
    rules = write_rules(
        tmp_path,
        "rules:\n  - name: failed\n    filter:\n"
        "      includedEventTypes: [Microsoft.MachineLearningServices.RunStatusChanged]\n"
        "      advancedFilters:\n"
        "        - {operatorType: StringIn, key: data.runStatus, values: [Failed]}\n"
        "    actions: [{type: webhook, url: 'https://x.example.com', "
        "headers: {k: '${SECRET_X}'}}]\n"
        "  - name: models\n"
        "    filter: {subjectBeginsWith: models/}\n"
        "    actions: [{type: log, message: m}]\n",
    )
    event = tmp_path / "event.json"
    event.write_text(json.dumps(eg("x", data={"runStatus": "failed"})))
    assert main(["explain", "--rules", str(rules), str(event), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched_rules"] == ["failed"]
    failed, models = report["rules"]
    assert failed["matched"] and not models["matched"]
    assert [c["passed"] for c in failed["clauses"]] == [True, True]
    assert failed["clauses"][1]["looked_at"] == "failed"
    assert failed["actions"][0]["params"]["headers"]["k"] == "***"
    assert models["clauses"][0]["clause"].startswith("subjectBeginsWith")
    assert not models["clauses"][0]["passed"]
    assert main(["explain", "--rules", str(rules), str(event)]) == 0
    text = capsys.readouterr().out
    assert "rule failed: MATCHES" in text and "rule models: does not match" in text
    assert "FAIL" in text


def test_explain_reports_foreign_topic(tmp_path, capsys):
    rules = write_rules(tmp_path, "rules:\n  - name: r\n    actions: [{type: log, message: m}]\n")
    event = tmp_path / "event.json"
    event.write_text(json.dumps(eg("x", topic="/subscriptions/x/other")))
    assert main(["explain", "--rules", str(rules), str(event), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["topic_allowed"] is False and report["matched_rules"] == []


def test_explain_rejects_a_file_without_events(tmp_path, capsys):
    event = tmp_path / "event.json"
    event.write_text("{}")
    code = main(["explain", "--rules", str(EXAMPLES / "demo.rules.yaml"), str(event)])
    assert code == 1 and "neither 'specversion'" in capsys.readouterr().err


def test_console_script_and_module_entry_points(tmp_path):
    """`python -m worker` and the installed script both run, with output on stdout only."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "check-rules", str(EXAMPLES / "demo.rules.yaml")],
        env={**os.environ, "DEMO_WEBHOOK_URL": "http://127.0.0.1:9/hook"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "OK" in result.stdout
    script = Path(sys.executable).with_name("aml-event-worker")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("check-rules", "explain", "replay"):
        assert command in result.stdout


@pytest.mark.parametrize("bad_source", ["file:", "nope:x", "capture:"])
def test_unsupported_source_is_a_usage_error(bad_source, capsys):
    code = main(["replay", "--rules", str(EXAMPLES / "demo.rules.yaml"), "--source", bad_source])
    assert code == 2 and "unsupported --source" in capsys.readouterr().err


def test_export_filters_through_the_cli(capsys):
    """One subscription per rule, PartitionKey mapped to the subject, in each format."""
    rules = str(EXAMPLES / "rules.yaml")
    assert main(["export-filters", "--rules", rules]) == 0
    out = capsys.readouterr().out
    assert out.count("az eventgrid event-subscription create") == 6
    assert out.count("--delivery-attribute-mapping PartitionKey dynamic subject") == 6
    assert main(["export-filters", "--rules", rules, "--format", "arm"]) == 0
    template = json.loads(capsys.readouterr().out)
    assert len(template["resources"]) == 6
    assert main(["export-filters", "--rules", rules, "--format", "bicep"]) == 0
    assert "Microsoft.EventGrid/eventSubscriptions@" in capsys.readouterr().out


def test_file_replay_without_dry_run_runs_the_actions(tmp_path, capsys):
    """The same plan, acted on: the webhook peer sees every planned key once."""
    from tests.test_run_actions import WebhookPeer
    from worker.plan import idempotency_key

    rules = write_rules(
        tmp_path,
        "ordering: {grace: 0s}\nrules:\n  - name: r\n    actions:\n"
        "      - {type: webhook, id: h, url: '${HOOK_URL}'}\n",
    )
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(eg(f"e{i}", subject=f"s{i}")) + "\n" for i in range(5)))
    with WebhookPeer() as peer:
        os.environ["HOOK_URL"] = f"http://127.0.0.1:{peer.port}/hook"
        try:
            code = main(
                ["replay", "--rules", str(rules), "--source", f"file:{source}",
                 "--dead-letter", str(tmp_path / "dead.jsonl")]
            )  # fmt: skip
        finally:
            del os.environ["HOOK_URL"]
        assert code == 0
        assert set(peer.keys()) == {idempotency_key(TOPIC, f"e{i}", "r", "h") for i in range(5)}
    assert "actions_dispatched=5" in capsys.readouterr().err


def test_per_object_throttle_memory_stays_bounded():
    """Objects that stop firing are forgotten once their window has passed."""
    from tests.conftest import event_of
    from worker.plan import Throttler
    from worker.rules import parse_rules

    ruleset = parse_rules(
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n  - name: r\n"
        "    throttle: {per: object, at_most: 1, every: 1m}\n"
        "    actions: [{type: log, message: x}]\n",
        "rules.yaml",
    )
    rule = ruleset.rules[0]
    throttler = Throttler()
    for i in range(500):
        minute, second = divmod(i, 60)
        event = event_of(
            eg(f"e{i}", subject=f"s{i}", time=f"2024-06-10T10:{minute:02d}:{second:02d}Z")
        )
        assert throttler.admit(rule, event)
    assert len(throttler) <= 61  # one minute of objects, not 500
    again = event_of(eg("x", subject="s499", time="2024-06-10T10:08:30Z"))
    assert not throttler.admit(rule, again)  # still throttled within its minute
    restored = Throttler.restore(throttler.snapshot())
    assert not restored.admit(rule, again) and len(restored) == len(throttler)
