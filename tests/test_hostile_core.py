"""Hostile event data through the pure core (issue 12: items 2, 7, 11a and the encoders of 4).

Through the public interfaces — `PartitionPipeline.feed`/`tick`/`finish`, the file replay
(`replay.dry_run` and `aml-event-worker replay`) and `explain` — every trigger found once is
replayed (huge integers, NaN/Infinity, times at and past the ends of the calendar, deep
nesting, lone surrogates, failures inside the pipeline), and hypothesis throws generated
hostile bodies (tests/hostile.py) at the same interfaces: nothing raises, every body and
every event is accounted for (DESIGN §6: the outcomes add up to `events`; `invalid` counts
the rejections), and every plan line and dead letter is JSON that UTF-8 can encode.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import worker.ordering
from tests.conftest import RUN_STATUS, TOPIC, ce, eg
from tests.hostile import HOSTILE_NUMBERS, deep_json, deep_value, hostile_bodies
from worker.cli import main
from worker.events import Origin, ticks_of
from worker.explain import explain_events, render_text
from worker.jsontext import dumps, utf8_safe
from worker.ordering import Sequencer
from worker.pipeline import PartitionPipeline, Step
from worker.plan import PlannedAction, RenderFailure
from worker.replay import dead_letter_for_rejection, dry_run, json_line
from worker.rules import parse_rules

OUTCOMES = ("foreign_topic", "unknown_type", "duplicate", "stale", "unmatched", "matched")
NOW = datetime(2024, 6, 10, 10, tzinfo=UTC)

RULES = f"""version: 1
topics: ['{TOPIC}']
ordering: {{grace: GRACE}}
rules:
  - name: everything
    actions:
      - {{type: log, id: note, message: '{{{{ event.subject }}}} {{{{ data }}}}'}}
      - type: webhook
        id: hook
        url: https://hooks.example.invalid/x
        body: {{subject: '{{{{ event.subject }}}}', data: '{{{{ data }}}}'}}
  - name: strings
    filter:
      enableAdvancedFilteringOnArrays: true
      advancedFilters:
        - {{operatorType: StringContains, key: data.note, values: ['a', '<', "\\ue000"]}}
    actions:
      - type: adf_pipeline
        factory: f
        pipeline: p
        parameters: {{ratio: 0.5, note: '{{{{ data.note }}}}'}}
  - name: numbers
    ordering: {{late: deliver}}
    throttle: {{per: object, at_most: 2, every: 1m}}
    filter:
      advancedFilters:
        - {{operatorType: NumberInRange, key: data.runStatus, values: [[-1.0e300, 1.0e300]]}}
    actions:
      - {{type: log, message: '{{{{ data.runStatus }}}} {{{{ event.time }}}}'}}
"""


def _ruleset(grace: str = "0s"):
    return parse_rules(RULES.replace("GRACE", grace), "rules.yaml", environ={})


RULESET = _ruleset()
RULESET_GRACE = _ruleset("5s")
ACTIONS_OF_A_RUN_STATUS_EVENT = sum(len(r.actions) for r in RULESET.rules_for(RUN_STATUS))


def _origin(number: int, enqueued: datetime | None = NOW) -> Origin:
    return Origin("0", str(number), number, enqueued)


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _with_raw(obj: dict[str, Any], raw: str) -> bytes:
    """The event with the JSON text `raw` as `data.x` (a number json.dumps cannot write)."""
    return json.dumps({**obj, "data": {"x": "@raw@"}}).replace('"@raw@"', raw).encode()


def _loads(text: str) -> Any:
    """json.loads, deep enough for the ~1,000 levels a body may have."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(limit)


def _lines(text: str) -> list[str]:
    """JSON lines end at "\n" only: `str.splitlines` would also cut at U+2028 and the other
    Unicode line breaks, which JSON strings may hold as they are."""
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def _summary_adds_up(pipeline: PartitionPipeline, steps: list[Step]) -> dict[str, int]:
    """DESIGN §6, and one decision per decoded event whichever call released it."""
    summary = pipeline.summary.as_dict()
    assert sum(summary[name] for name in OUTCOMES) == summary["events"], summary
    assert summary["invalid"] == sum(len(step.rejections) for step in steps)
    assert summary["events"] == sum(len(step.decisions) for step in steps)
    assert summary["planned"] == sum(len(step.actions) for step in steps)
    assert summary["render_errors"] == sum(len(step.failures) for step in steps)
    return summary


def _outputs_encode(steps: list[Step]) -> list[dict[str, Any]]:
    """Every plan line and dead letter: one JSON line that UTF-8 encodes and that reads
    back to what arrived, lone surrogates included. Returns the plan lines."""
    lines = []
    for step in steps:
        for rejection in step.rejections:
            assert rejection.reason
            text = json_line(dead_letter_for_rejection(rejection))
            text.encode("utf-8")
            assert _loads(text)["source"] == rejection.origin.as_dict()
        for failure in step.failures:
            text = json_line(failure.dead_letter())
            text.encode("utf-8")
            record = _loads(text)
            assert record["event_id"] == failure.event.id and record["reason"]
        for action in step.actions:
            text = action.plan_json()
            assert text.endswith("\n") and "\n" not in text[:-1]
            text.encode("utf-8")
            line = json.loads(text)
            assert (line["event_id"], line["subject"]) == (action.event.id, action.event.subject)
            assert line["idempotency_key"] == action.key
            lines.append(line)
    return lines


# --- decoding: each trigger is an invalid element, its siblings are events ----------------


def test_a_huge_integer_rejects_its_element_and_not_its_siblings() -> None:
    pipeline = PartitionPipeline(RULESET)
    poisoned = _with_raw(eg("b", subject="runs/b"), "9" * 5000).decode()
    body = f"[{json.dumps(eg('a', subject='runs/a'))},{poisoned},"
    body += f"{json.dumps(eg('c', subject='runs/c'))}]"
    step = pipeline.feed(body.encode(), _origin(7), NOW)
    assert [r.index for r in step.rejections] == [1]
    assert step.rejections[0].reason == (
        "not standard JSON: an integer of 5000 digits is out of range"
    )
    assert step.rejections[0].origin.sequence_number == 7
    assert {a.event.id for a in step.actions} == {"a", "c"}
    summary = _summary_adds_up(pipeline, [step])
    assert (summary["events"], summary["invalid"]) == (2, 1)


@pytest.mark.parametrize(("digits", "decodes"), [(4300, True), (4301, False)])
@pytest.mark.parametrize("sign", ["", "-"])
@pytest.mark.parametrize("subject", ["runs/plain", "runs/\udc80"])
def test_an_integer_decodes_or_not_alike_on_both_decoding_paths(digits, decodes, sign, subject):
    """msgspec takes plain JSON, the standard library the rest (here: a lone surrogate
    escape): the limit is the interpreter's 4,300 digits on both, so one element never
    decodes on one path and is rejected on the other."""
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(_with_raw(eg(subject=subject), sign + "9" * digits), _origin(0), NOW)
    assert (step.decoded, len(step.rejections)) == ((1, 0) if decodes else (0, 1))
    if decodes:
        number = next(iter(d.event.data["x"] for d in step.decisions))
        assert number == int(sign + "9" * digits)
        _outputs_encode([step])


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "-1E400"])
def test_nan_infinity_and_overflowing_numbers_are_invalid_elements(raw) -> None:
    """RFC 8259 (DESIGN §7): not forwarded as non-standard JSON, rejected at decode."""
    pipeline = PartitionPipeline(RULESET)
    body = b"[" + _with_raw(eg("bad"), raw) + b"," + _body(eg("good", subject="runs/g")) + b"]"
    step = pipeline.feed(body, _origin(0), NOW)
    assert [(r.index, r.reason.split(":")[0]) for r in step.rejections] == [
        (0, "not standard JSON")
    ]
    assert raw.lstrip("-") in step.rejections[0].reason
    assert [d.event.id for d in step.decisions] == ["good"]
    # Alone, the body is the invalid part.
    alone = pipeline.feed(_with_raw(eg("bad"), raw), _origin(1), NOW)
    assert alone.decoded == 0 and [r.index for r in alone.rejections] == [None]
    _summary_adds_up(pipeline, [step, alone])


def test_a_number_that_underflows_is_standard_json_and_decodes() -> None:
    step = PartitionPipeline(RULESET).feed(_with_raw(eg(), "1e-400"), _origin(0), NOW)
    assert step.decoded == 1 and step.decisions[0].event.data == {"x": 0.0}


OUT_OF_RANGE = [
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "9999-12-31T23:59:60Z",  # the leap second after the last one there is
    "2024-06-10T10:00:00+99:99",  # an offset no clock has
]


@pytest.mark.parametrize("time", OUT_OF_RANGE)
@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_times_out_of_range_are_invalid_elements_with_a_located_reason(time, schema) -> None:
    pipeline = PartitionPipeline(RULESET)
    build, field = (eg, "'eventTime'") if schema == "eventgrid" else (ce, "'time'")
    body = _body([build("bad", time=time), build("good", subject="runs/g")])
    step = pipeline.feed(body, _origin(3), NOW)
    [rejection] = step.rejections
    assert rejection.index == 0 and field in rejection.reason and time in rejection.reason
    assert "out of range" in rejection.reason
    assert rejection.describe().startswith("partition 0, sequence number 3, offset 3")
    assert [d.event.id for d in step.decisions] == ["good"]
    _summary_adds_up(pipeline, [step])


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.9999999Z"])
def test_times_at_the_ends_of_the_calendar_are_events(time) -> None:
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(_body(eg(time=time)), _origin(0), NOW)
    steps = [step, pipeline.finish()]
    assert step.decoded == 1 and not step.rejections
    _summary_adds_up(pipeline, steps)
    _outputs_encode(steps)


def test_nesting_past_any_decoder_is_one_invalid_body() -> None:
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(b"[" * 100_000 + b"]" * 100_000, _origin(0), NOW)
    assert step.decoded == 0
    assert [r.reason for r in step.rejections] == ["body is not JSON (nested too deeply)"]


@pytest.mark.parametrize("depth", [400, 900, 990, 1200])
def test_deep_data_near_the_decoders_limit_never_raises(depth) -> None:
    """Whether it decodes depends on the stack at hand; whatever it becomes (planned,
    render error, invalid), it is accounted for and every output encodes."""
    pipeline = PartitionPipeline(RULESET)
    body = json.dumps(eg(data={"runStatus": "@"})).replace('"@"', deep_json(depth, '"a"'))
    steps = [pipeline.feed(body.encode(), _origin(0), NOW), pipeline.finish()]
    assert steps[0].decoded + len(steps[0].rejections) == 1
    _summary_adds_up(pipeline, steps)
    _outputs_encode(steps)


# --- the per-event guard: a failure is that event's, never the partition's -----------------


def _three(first_id: str = "ok1") -> bytes:
    return _body(
        [
            eg(first_id, subject="runs/1", time="2024-06-10T10:00:01Z"),
            eg("boom", subject="runs/2", time="2024-06-10T10:00:02Z"),
            eg("ok2", subject="runs/3", time="2024-06-10T10:00:03Z"),
        ]
    )


def test_an_event_that_cannot_be_taken_in_is_invalid_and_the_sequencer_never_had_it(
    monkeypatch,
) -> None:
    original = Sequencer.effective_time

    def effective_time(self, event):
        if event.id == "boom":
            raise RuntimeError("cannot\nclamp")
        return original(self, event)

    monkeypatch.setattr(Sequencer, "effective_time", effective_time)
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(_three(), _origin(5), NOW)
    [rejection] = step.rejections
    assert rejection.reason == "event 'boom' could not be processed (RuntimeError: cannot)"
    assert rejection.origin.sequence_number == 5
    assert json.loads(rejection.body)["id"] == "boom"  # the event, for the dead letter
    assert step.decoded == 2 and [d.event.id for d in step.decisions] == ["ok1", "ok2"]
    assert pipeline.sequencer.remembered_ids == 2 and pipeline.sequencer.held == 0
    assert (pipeline.summary.invalid, pipeline.summary.events) == (1, 2)
    monkeypatch.undo()
    # The sequencer never took it: redelivered, it is new, not a duplicate.
    again = pipeline.feed(_body(eg("boom", subject="runs/2", time="2024-06-10T10:00:04Z")),
                          _origin(6), NOW)  # fmt: skip
    assert [(d.event.id, d.outcome.value) for d in again.decisions] == [("boom", "matched")]
    _summary_adds_up(pipeline, [step, again])


def test_an_event_whose_judging_fails_still_leaves_the_buffer_dead_lettered(monkeypatch):
    """Released together, in order: the one that cannot be judged becomes its dead letters
    (one per action of each rule of its type) and the others go on; nothing stays held."""
    original = worker.ordering.sequencer_key

    def sequencer_key(event, effective=None):
        if event.id == "boom":
            raise RuntimeError("no sequencer")
        return original(event, effective)

    monkeypatch.setattr(worker.ordering, "sequencer_key", sequencer_key)
    pipeline = PartitionPipeline(RULESET_GRACE)
    fed = pipeline.feed(_three(), _origin(0), NOW)
    assert fed.decisions == [] and pipeline.sequencer.held == 3
    done = pipeline.finish()
    assert [d.event.id for d in done.decisions] == ["ok1", "boom", "ok2"]
    boom = done.decisions[1]
    assert boom.actions == () and len(boom.failures) == ACTIONS_OF_A_RUN_STATUS_EVENT
    assert all("RuntimeError: no sequencer" in f.error for f in boom.failures)
    assert [len(d.actions) for d in (done.decisions[0], done.decisions[2])] == [2, 2]
    assert pipeline.sequencer.held == 0
    summary = _summary_adds_up(pipeline, [fed, done])
    assert summary["render_errors"] == ACTIONS_OF_A_RUN_STATUS_EVENT
    _outputs_encode([done])
    # Its object was never recorded: its next event is judged afresh, not stale.
    monkeypatch.undo()
    later = eg("boom-2", subject="runs/2", time="2024-06-10T10:00:01Z")
    step = pipeline.feed(_body(later), _origin(1), NOW)
    steps = [step, pipeline.finish()]
    assert [d.outcome.value for s in steps for d in s.decisions] == ["matched"]


def test_a_failure_outside_the_rule_guard_gives_every_released_event_a_decision(monkeypatch):
    """`tick` releases three events at once; matching one raises: the other two are planned,
    that one is dead-lettered, and each of the three has its one outcome."""
    original = PartitionPipeline._match

    def match(self, item):
        if item.event.id == "boom":
            raise ValueError("cannot match")
        return original(self, item)

    monkeypatch.setattr(PartitionPipeline, "_match", match)
    pipeline = PartitionPipeline(RULESET_GRACE)
    fed = pipeline.feed(_three(), _origin(0, NOW), NOW)
    assert pipeline.sequencer.held == 3
    assert pipeline.tick(NOW + timedelta(seconds=1)).decisions == []  # grace not over
    ticked = pipeline.tick(NOW + timedelta(seconds=6))
    assert [d.event.id for d in ticked.decisions] == ["ok1", "boom", "ok2"]
    assert [(len(d.actions), len(d.failures)) for d in ticked.decisions] == [
        (2, 0),
        (0, ACTIONS_OF_A_RUN_STATUS_EVENT),
        (2, 0),
    ]
    assert "ValueError: cannot match" in ticked.decisions[1].failures[0].dead_letter()["reason"]
    summary = _summary_adds_up(pipeline, [fed, ticked, pipeline.finish()])
    assert summary["matched"] == 3 and summary["render_errors"] == ACTIONS_OF_A_RUN_STATUS_EVENT


# --- item 7: every use of event time is the clamped one -----------------------------------

THROTTLED = f"""version: 1
topics: ['{TOPIC}']
ordering: {{grace: 0s, max_skew: 5m}}
rules:
  - name: once
    throttle: {{per: rule, at_most: 1, every: 1m}}
    actions: [{{type: log, message: x}}]
"""


def _timed(event_id: str, subject: str, time: str, enqueued: datetime, n: int) -> tuple:
    return _body(eg(event_id, subject=subject, time=time)), _origin(n, enqueued)


def test_the_throttle_clock_is_the_clamped_event_time() -> None:
    """A far-future event fires at its enqueued time, as the watermark sees it: the next
    firing within the minute is throttled, and the window it left is forgotten."""
    pipeline = PartitionPipeline(parse_rules(THROTTLED, "rules.yaml", environ={}))
    steps = [pipeline.feed(*_timed("future", "runs/a", "9000-01-01T00:00:00Z", NOW, 0), NOW)]
    assert pipeline.throttler.snapshot() == [[["once"], [ticks_of(NOW)], 60 * 10_000_000]]
    soon = NOW + timedelta(seconds=30)
    steps.append(pipeline.feed(*_timed("soon", "runs/b", soon.isoformat(), soon, 1), soon))
    later = NOW + timedelta(minutes=2)
    steps.append(pipeline.feed(*_timed("later", "runs/c", later.isoformat(), later, 2), later))
    assert [(len(s.actions), sum(d.throttled for d in s.decisions)) for s in steps] == [
        (1, 0),
        (0, 1),
        (1, 0),
    ]
    assert pipeline.throttler.snapshot()[0][1] == [ticks_of(later)]
    _summary_adds_up(pipeline, steps)


def test_a_far_future_event_cannot_make_its_objects_next_events_stale() -> None:
    """The time sequencer is clamped too: the object's real next event is not stale."""
    pipeline = PartitionPipeline(RULESET)
    steps = [pipeline.feed(*_timed("future", "runs/x", "9000-01-01T00:00:00Z", NOW, 0), NOW)]
    later = NOW + timedelta(minutes=1)
    steps.append(pipeline.feed(*_timed("next", "runs/x", later.isoformat(), later, 1), later))
    earlier = NOW - timedelta(minutes=1)
    steps.append(pipeline.feed(*_timed("old", "runs/x", earlier.isoformat(), later, 2), later))
    outcomes = [(d.event.id, d.outcome.value) for s in steps for d in s.decisions]
    assert outcomes == [("future", "matched"), ("next", "matched"), ("old", "stale")]
    _summary_adds_up(pipeline, steps)


def test_a_far_future_event_cannot_purge_the_dedupe_memory() -> None:
    pipeline = PartitionPipeline(RULESET)
    steps = [
        pipeline.feed(*_timed("first", "runs/1", NOW.isoformat(), NOW, 0), NOW),
        pipeline.feed(*_timed("future", "runs/2", "9000-01-01T00:00:00Z", NOW, 1), NOW),
        pipeline.feed(*_timed("first", "runs/1", NOW.isoformat(), NOW, 2), NOW),
    ]
    assert steps[2].decisions[0].outcome.value == "duplicate"
    _summary_adds_up(pipeline, steps)


# --- encoders -------------------------------------------------------------------------------


def test_a_lone_surrogate_survives_the_plan_as_its_escape() -> None:
    pipeline = PartitionPipeline(RULESET)
    body = _body(eg("s\udc80", subject="runs/\udc80", data={"note": "a\ud800b"}))
    step = pipeline.feed(body, _origin(0), NOW)
    assert len(step.actions) == 3  # everything (2) and strings (1)
    for action in step.actions:
        text = action.plan_json()
        assert "\\udc80" in text and text == json_line(action.plan_line())
    lines = _outputs_encode([step])
    assert {line["subject"] for line in lines} == {"runs/\udc80"}
    assert {line["event_id"] for line in lines} == {"s\udc80"}


def test_plan_lines_of_plain_events_stay_on_the_fast_path_byte_for_byte(monkeypatch) -> None:
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(_body(eg(data={"note": "plain"})), _origin(0), NOW)
    expected = {
        a.action.type: json.dumps(a.plan_line(), ensure_ascii=False, separators=(",", ":")) + "\n"
        for a in step.actions
    }

    def no_slow_path(*args, **kwargs):
        raise AssertionError("plain params must be encoded by msgspec")

    monkeypatch.setattr("worker.plan.dumps", no_slow_path)
    plain = [a for a in step.actions if a.action.plain_params]
    assert {a.action.type for a in plain} == {"log", "webhook"}
    for action in plain:
        assert action.plan_json() == expected[action.action.type]


def test_json_text_of_any_depth_and_any_string() -> None:
    deep = deep_value(5000, "\udc80\ue000")
    text = dumps({"event": deep})
    text.encode("utf-8")
    assert text.startswith('{"event":[{"k":[{"k":[') and text.endswith("}]}]}")
    assert '{"k":"\\udc80\ue000"}]}]' in text
    assert text == '{"event":' + deep_json(5000, '"\\udc80\ue000"') + "}"
    shallow = {"a": [1, 2.5, None, True, "\ue000"], "t": NOW}
    expected = json.dumps(shallow, ensure_ascii=False, separators=(",", ":"), default=str)
    assert dumps(shallow) == expected


def test_dead_letters_of_deep_events_encode() -> None:
    """A render failure's dead letter carries the event as received, at any depth."""
    pipeline = PartitionPipeline(RULESET)
    step = pipeline.feed(_body(eg(subject="runs/\udc80")), _origin(0), NOW)
    action = next(a for a in step.actions if isinstance(a, PlannedAction))
    deep_event = dataclasses.replace(action.event, raw={"data": deep_value(3000)})
    failure = RenderFailure(action.rule, action.action, deep_event, action.key, "boom")
    text = json_line(failure.dead_letter())
    assert '"event":{"data":' + deep_json(3000) + "}" in text
    assert _loads(text)["subject"] == "runs/\udc80"


# --- the CLIs: file replay and explain never die with a traceback ------------------------------


def _trigger_lines() -> list[tuple[str, bytes, int]]:
    """(name, body, invalid parts it must give)."""
    lines = [
        ("huge-integer", _with_raw(eg("t-huge"), "9" * 5000), 1),
        ("nan", _with_raw(eg("t-nan"), "NaN"), 1),
        ("infinity", _with_raw(eg("t-inf"), "Infinity"), 1),
        ("overflow", _with_raw(eg("t-ovf"), "1e400"), 1),
        ("deep", b"[" * 100_000 + b"]" * 100_000, 1),
        ("surrogate-subject", _body(eg("t-sur", subject="runs/\udc80")), 0),
        ("surrogate-in-bad-element", _body([1, {"eventType": "\udc80"}]), 2),
        ("private-use", _body(eg("t-pua\ue000", subject="\uf8ff\r\n\ue001")), 0),
        (
            "integer-at-the-limit",
            _with_raw(eg("t-4300\udc81", subject="runs/limit"), "9" * 4300),
            0,
        ),
    ]
    lines += [(f"time-{t}", _body([eg("t-t", time=t), ce("t-c", time=t)]), 2) for t in OUT_OF_RANGE]
    return lines


def _replay_cli(tmp_path: Path, lines: list[bytes]) -> tuple[int, dict, list, list]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("GRACE", "0s"))
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    plan, summary, dead = (tmp_path / n for n in ("plan.jsonl", "summary.json", "dead.jsonl"))
    code = main(
        [
            "replay", "--rules", str(rules), "--source", f"file:{source}", "--dry-run",
            "--output", str(plan), "--summary-json", str(summary), "--dead-letter", str(dead),
        ]
    )  # fmt: skip
    plan_lines = [json.loads(line) for line in _lines(plan.read_bytes().decode("utf-8"))]
    dead_lines = [_loads(line) for line in _lines(dead.read_bytes().decode("utf-8"))]
    return code, json.loads(summary.read_text()), plan_lines, dead_lines


def test_a_file_replay_of_every_trigger_completes_and_adds_up(tmp_path, capfd) -> None:
    triggers = _trigger_lines()
    lines = []
    for index, (_, body, _) in enumerate(triggers):
        lines.append(body)  # then a plain event: it must get through whatever came before
        lines.append(_body(eg(f"plain-{index}", subject=f"plain/{index}", time=NOW.isoformat())))
    code, summary, plan, dead = _replay_cli(tmp_path, lines)
    assert code == 0
    assert "Traceback" not in capfd.readouterr().err
    assert sum(summary[name] for name in OUTCOMES) == summary["events"]
    assert summary["messages"] == len(lines)
    assert summary["invalid"] == sum(invalid for _, _, invalid in triggers)
    assert len(dead) == summary["invalid"] + summary["render_errors"]
    assert all(record["reason"] and record["source"]["line"] for record in dead)
    assert {f"plain-{i}" for i in range(len(triggers))} <= {line["event_id"] for line in plan}
    assert {"runs/\udc80", "\uf8ff\r\n\ue001", "runs/limit"} <= {line["subject"] for line in plan}
    # The element's dead letter keeps it exactly: its body reads back to the same string.
    surrogate_element = next(r for r in dead if r["index"] == 1 and "eventType" in r["body"])
    assert json.loads(surrogate_element["body"]) == {"eventType": "\udc80"}


@pytest.mark.parametrize(
    ("name", "body", "invalid"), _trigger_lines(), ids=[t[0] for t in _trigger_lines()]
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_explain_never_dies_on_a_trigger(tmp_path, capfd, name, body, invalid, as_json) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("GRACE", "0s"))
    event = tmp_path / "event.json"
    event.write_bytes(body)
    code = main(["explain", "--rules", str(rules), *(["--json"] if as_json else []), str(event)])
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    decodes = name in ("surrogate-subject", "private-use", "integer-at-the-limit")
    assert code == (0 if decodes else 1)
    if not decodes:
        assert "holds no event to explain" in err
    elif as_json:
        assert json.loads(out)["rules"][0] == {**json.loads(out)["rules"][0], "matched": True}
    else:
        assert "rule everything: MATCHES" in out


def test_explain_json_shows_a_value_nested_too_deep_as_its_text(tmp_path, capsys) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("GRACE", "0s"))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(eg(data={"note": "@"})).replace('"@"', deep_json(150, '"a"')))
    assert main(["explain", "--rules", str(rules), "--json", str(event)]) == 0
    report = json.loads(capsys.readouterr().out)
    strings = next(r for r in report["rules"] if r["rule"] == "strings")
    shown = strings["clauses"][0]["looked_at"]
    assert shown == deep_json(150, '"a"')  # the value, as compact JSON text


# --- properties: generated hostile bodies -----------------------------------------------------

_PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_MIRROR = json.JSONDecoder(parse_constant=str, parse_int=str, parse_float=str)


def _parts(body: bytes) -> int | None:
    """How many parts (events or rejections) a body must give, when its shape is plain."""
    try:
        document = _MIRROR.decode(body.decode("utf-8"))
    except UnicodeDecodeError:
        return 1
    except RecursionError:
        return None  # msgspec may still read it: one part per element, or one rejection
    except ValueError:
        return 1
    return len(document) if isinstance(document, list) and document else 1


def _sentinel(number: int) -> bytes:
    return _body(eg(f"sentinel-{number}", subject=f"sentinel/{number}", time=NOW.isoformat()))


@_PROPERTY
@given(bodies=st.lists(hostile_bodies(extreme=True), min_size=1, max_size=4))
def test_any_bodies_through_feed_and_finish(bodies: list[bytes]) -> None:
    pipeline = PartitionPipeline(RULESET)
    steps = []
    for number, body in enumerate(bodies):
        step = pipeline.feed(body, _origin(2 * number), NOW)
        parts = _parts(body)
        got = step.decoded + len(step.rejections)
        assert got == parts if parts is not None else got >= 1
        assert all(r.origin.sequence_number == 2 * number for r in step.rejections)
        steps += [step, pipeline.feed(_sentinel(number), _origin(2 * number + 1), NOW)]
    steps.append(pipeline.finish())
    summary = _summary_adds_up(pipeline, steps)
    assert summary["messages"] == 2 * len(bodies)
    assert pipeline.sequencer.held == 0
    lines = _outputs_encode(steps)
    # Nothing stopped the flow: the plain event after each hostile body was planned.
    planned = {line["event_id"] for line in lines if line["rule"] == "everything"}
    assert {f"sentinel-{n}" for n in range(len(bodies))} <= planned


@_PROPERTY
@given(
    arrivals=st.lists(
        st.tuples(hostile_bodies(extreme=True), st.integers(0, 20)), min_size=1, max_size=5
    )
)
def test_any_bodies_held_back_and_released_by_the_clock(arrivals) -> None:
    """With a grace window, events wait and `tick` releases them (as `run` does)."""
    pipeline = PartitionPipeline(RULESET_GRACE)
    steps = []
    now = NOW
    for number, (body, wait) in enumerate(arrivals):
        now += timedelta(seconds=wait)
        steps.append(pipeline.feed(body, _origin(number, now), now))
        steps.append(pipeline.tick(now))
    steps.append(pipeline.finish())
    _summary_adds_up(pipeline, steps)
    assert pipeline.sequencer.held == 0
    _outputs_encode(steps)


@_PROPERTY
@given(bodies=st.lists(hostile_bodies(extreme=True), min_size=1, max_size=4))
def test_any_bodies_through_a_file_replay(bodies: list[bytes]) -> None:
    plan, dead = io.StringIO(), io.StringIO()
    messages = [(body, Origin(line=number + 1)) for number, body in enumerate(bodies)]
    summary = dry_run(RULESET, messages, plan, dead).as_dict()
    assert sum(summary[name] for name in OUTCOMES) == summary["events"]
    plan_lines, dead_lines = _lines(plan.getvalue()), _lines(dead.getvalue())
    assert len(plan_lines) == summary["planned"]
    assert len(dead_lines) == summary["invalid"] + summary["render_errors"]
    for text in plan_lines + dead_lines:
        text.encode("utf-8")
        assert isinstance(_loads(text), dict)


@_PROPERTY
@given(body=hostile_bodies(extreme=True))
def test_explain_answers_any_body(body: bytes) -> None:
    reports, rejections = explain_events(RULESET, body)
    assert len(reports) + len(rejections) >= 1
    utf8_safe(render_text(reports)).encode("utf-8")  # what `explain` prints
    if reports:  # what `explain --json` prints
        json.loads(json.dumps(reports, indent=2, default=str))


def test_the_hostile_numbers_decode_as_documented() -> None:
    """The shared strategies' numbers mean what tests/hostile.py says of them."""
    pipeline = PartitionPipeline(RULESET)
    decoded = [
        pipeline.feed(_with_raw(eg(), raw), _origin(0), NOW).decoded for raw in HOSTILE_NUMBERS
    ]
    assert dict(zip(HOSTILE_NUMBERS, decoded, strict=True)) == {
        "NaN": 0,
        "Infinity": 0,
        "-Infinity": 0,
        "1e400": 0,
        "-1e400": 0,
        "1e-400": 1,
        "9" * 4300: 1,
        "-" + "9" * 4300: 1,
        "9" * 4301: 0,
        "9" * 5000: 0,
        "1." + "0" * 5000: 1,
    }
