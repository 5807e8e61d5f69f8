"""Hostile event content through the pure pipeline, `replay` and `explain` (DESIGN §7).

Every body is accounted for (planned, counted or dead-lettered: the summary adds up), no
input raises, no secret reaches an output, and a bad body never stops the bodies after it.
`run` gets the same corpus in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOPIC, eg
from tests.hostile import hostile_bodies
from tests.hostile_corpus import CASES, SECRET_ENV, body_lines, rules_text
from worker.cli import main
from worker.events import Origin
from worker.jsontext import dumps_bytes
from worker.pipeline import PartitionPipeline
from worker.rules import parse_rules

OUTCOMES = ["foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched"]


def _ruleset():
    return parse_rules(rules_text(), "rules.yaml", environ=SECRET_ENV)


def _assert_adds_up(summary: dict[str, int]) -> None:
    assert sum(summary[o] for o in OUTCOMES) == summary["events"], summary


def _assert_no_secret(text: str) -> None:
    for value in SECRET_ENV.values():
        assert value not in text


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bodies=st.lists(hostile_bodies(), min_size=1, max_size=4))
def test_no_body_raises_and_every_one_is_accounted_for(bodies: list[bytes]) -> None:
    pipeline = PartitionPipeline(_ruleset())
    now = datetime(2024, 6, 10, 10, tzinfo=UTC)
    planned = invalid = 0
    for number, body in enumerate(bodies):
        origin = Origin("0", str(number), number, now, None)
        step = pipeline.feed(body, origin, now)
        invalid += len(step.rejections)
        for rejection in step.rejections:
            assert rejection.reason and rejection.origin.sequence_number == number
        for action in step.actions:
            line = action.plan_json()
            assert json.loads(line)["idempotency_key"] == action.key
            line.encode("utf-8")  # any string survives the plan encoder
            _assert_no_secret(line)
            planned += 1
    final = pipeline.finish()
    planned += len(final.actions)
    summary = pipeline.summary.as_dict()
    _assert_adds_up(summary)
    assert summary["messages"] == len(bodies)
    assert summary["invalid"] == invalid
    assert summary["planned"] == planned


def _replay(tmp_path: Path, source: Path, monkeypatch) -> tuple[int, dict, str, list[str]]:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    plan, summary, dead = (tmp_path / n for n in ("plan.jsonl", "summary.json", "dead.jsonl"))
    code = main(
        [
            "replay", "--rules", str(rules), "--source", f"file:{source}", "--dry-run",
            "--output", str(plan), "--summary-json", str(summary), "--dead-letter", str(dead),
        ]
    )  # fmt: skip
    dead_lines = [line for line in dead.read_text().split("\n") if line]
    return code, json.loads(summary.read_text()), plan.read_text(), dead_lines


def test_the_regression_corpus_through_a_file_replay(tmp_path, monkeypatch, capfd) -> None:
    source = tmp_path / "corpus.jsonl"
    source.write_text(body_lines())
    code, summary, plan, dead = _replay(tmp_path, source, monkeypatch)
    assert code == 0
    _assert_adds_up(summary)
    assert summary["messages"] == 2 * len(CASES)
    assert summary["invalid"] == sum(case.invalid for case in CASES) == len(dead)
    assert summary["events"] == sum(case.events for case in CASES) + len(CASES)
    lines = [json.loads(line) for line in plan.split("\n") if line]
    planned_ids = {line["event_id"] for line in lines}
    # Every plain event after a hostile body still went through: nothing stopped the flow.
    # (But the one after the year-9000 event: a file line has no enqueued time to clamp
    # against, so that event moves the watermark and the plain one after it is stale.)
    future = next(i for i, case in enumerate(CASES) if case.name == "far-future-time")
    expected = {f"plain-{i}" for i in range(len(CASES)) if i != future}
    assert expected <= planned_ids
    assert summary["stale"] == 1
    for record in dead:
        assert json.loads(record)["reason"]
    err = capfd.readouterr().err
    assert "Traceback" not in err
    for text in (plan, "\n".join(dead), err):
        _assert_no_secret(text)
    # A lone surrogate survives as its JSON escape, so the plan still says what arrived.
    assert "runs/\udc80" in {line["subject"] for line in lines}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_explain_never_dies_on_a_corpus_body(tmp_path, case, monkeypatch, capsys) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    event = tmp_path / "event.json"
    event.write_text(case.body)
    code = main(["explain", "--rules", str(rules), str(event)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if case.events:
        assert code == 0 and "rule everything: MATCHES" in out
    else:
        assert code == 1 and "holds no event to explain" in err


def test_a_rule_that_fails_on_an_event_dead_letters_it_and_the_partition_flows(monkeypatch):
    """The last guard: whatever a rule's evaluation raises becomes that event's dead
    letters (one per action, with the reason), and the next event is handled."""
    ruleset = _ruleset()
    rule = ruleset.rules[0]
    original = type(rule.filter).matches

    def matches(self, event, **kwargs):
        if event.id == "boom":
            raise RuntimeError("unexpected")
        return original(self, event, **kwargs)

    monkeypatch.setattr(type(rule.filter), "matches", matches)
    pipeline = PartitionPipeline(ruleset)
    first = pipeline.feed(json.dumps(eg("boom")).encode(), Origin("0", "0", 0))
    second = pipeline.feed(json.dumps(eg("fine", subject="runs/2")).encode(), Origin("0", "1", 1))
    failures = first.failures
    assert [f.action.index for f in failures] == [0, 1]
    assert "RuntimeError: unexpected" in failures[0].dead_letter()["reason"]
    assert [a.event.id for a in second.actions] == ["fine", "fine"]
    _assert_adds_up(pipeline.summary.as_dict())


def test_a_far_future_event_cannot_stop_throttle_clean_up() -> None:
    """DESIGN §4/§7: the throttle's clock is the clamped event time, like the watermark."""
    text = (
        f"version: 1\ntopics: ['{TOPIC}']\nordering: {{grace: 0s}}\nrules:\n"
        "  - name: once\n    throttle: {per: object, at_most: 1, every: 1m}\n"
        "    actions: [{type: log, message: x}]\n"
    )
    pipeline = PartitionPipeline(parse_rules(text, "rules.yaml", environ={}))
    start = datetime(2024, 6, 10, 10, tzinfo=UTC)
    future = eg("future", subject="runs/future", time="9000-01-01T00:00:00Z")
    pipeline.feed(json.dumps(future).encode(), Origin("0", "0", 0, start))
    for i in range(1, 600):
        moment = start + timedelta(seconds=i)
        event = eg(f"e{i}", subject=f"runs/{i}", time=moment.isoformat())
        pipeline.feed(json.dumps(event).encode(), Origin("0", str(i), i, moment))
    # One window per object that fired within the last minute, not one per object ever.
    assert len(pipeline.throttler) <= 62


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"data": {"x": _nested(300)}}, "nested deeper than 200 levels"),
        ({"subject": "s" * 5000}, "'subject' is 5,000 characters long"),
        ({"topic": TOPIC + "/" * 4097}, "'topic' is 4,"),
    ],
)
def test_what_would_poison_saved_state_or_memory_is_an_invalid_element(event, reason) -> None:
    """A value nested deeper than saved state can be read back, or a field long enough to
    fill the dedupe memory, is rejected at decode; its siblings still flow."""
    bad = eg("bad", **event)
    body = dumps_bytes([bad, eg("good", subject="runs/good")])
    pipeline = PartitionPipeline(_ruleset())
    step = pipeline.feed(body, Origin("0", "0", 0))
    assert len(step.rejections) == 1 and reason in step.rejections[0].reason
    assert [a.event.id for a in step.actions] == ["good", "good"]
