"""Poison messages mixed into a live stream: the worker must not crash, must dead-letter
every bad body (or bad array element) with the Event Hubs coordinates it was read at, and
must still run every good event's actions (DESIGN §2: "A body that is not valid JSON, not
UTF-8, or not an event goes to the dead-letter store with the reason and its Event Hubs
coordinates; the partition keeps flowing").

The bodies come from hypothesis strategies (truncated JSON, wrong types, huge strings, deep
nesting, invalid UTF-8, arrays mixing good and bad events, 1 MB bodies, odd scalars) and from
mutations of the shared sample events. Each body is bad *by construction* (its label is not
computed by the code under test): a proper prefix of a JSON object never parses, an
inserted invalid byte sequence is never UTF-8, a required field of the wrong type or
missing is never an event. Good events get unique ids and subjects after generation, so
dedupe and ordering cannot hide one. Valid events of a foreign topic or an unknown type are
mixed in too: they must be dropped, neither acted on nor dead-lettered.

The coordinates are checked against the hub itself: after the run, a fresh consumer reads
every message back, so each dead letter's partition, sequence number and offset must be
those of the message that carried the bad body.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.chaos.conftest import PARTITIONS
from tests.chaos.harness import (
    HOOK_ACTION,
    SOAK,
    Figures,
    Message,
    Publisher,
    WebhookPeer,
    WorkerPool,
    chaos_rules,
    wait_until,
    write_result,
)
from tests.chaos.test_outage import read_hub
from tests.conftest import EXAMPLES, SHARED_SAMPLES, TOPIC
from tests.workers import Env

POISON_BODIES = 1200 if SOAK else 30  # bodies with at least one bad part
GOOD_BODIES = 600 if SOAK else 10  # plain good events between them
MEGABYTE_SHARE = 0.02  # of the bad bodies, ~1 MB each (Event Hubs Standard's limit is 1 MB)
RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"
FOREIGN_TOPIC = TOPIC.replace("ws-demo", "ws-other")
BASE_MS = 1_718_000_000_000  # 2024-06-10, the samples' day

# --- what a body is made of -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Good:
    """A valid RunStatusChanged event, filled in with a unique id and subject at render time.

    `base` is a sample event (or None for a plain one), `depth` nests its data that deep
    (well below the JSON parser's recursion limit), `pad` adds a string of that length."""

    cloudevents: bool
    base: dict[str, Any] | None = None
    depth: int = 0
    pad: int = 0


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid event the rules must drop: a foreign topic or a type no rule names."""

    foreign_topic: bool


@dataclass(frozen=True, slots=True)
class Bad:
    """A JSON value that is not an event (as an array element or a whole object body)."""

    value: Any
    why: str


@dataclass(frozen=True, slots=True)
class Raw:
    """A whole body that is bad as bytes: not UTF-8, not JSON, nested too deeply, …"""

    make: str  # the recipe, for the result's category counts
    payload: bytes


Part = Good | Ignored | Bad


@dataclass(frozen=True, slots=True)
class Draft:
    """One message body before ids are assigned: a raw body, one object, or an array."""

    category: str
    raw: Raw | None = None
    single: Part | None = None
    elements: tuple[Part, ...] = ()


@dataclass(slots=True)
class Body:
    """A rendered body and what the worker must do with it."""

    category: str
    payload: bytes
    bad: dict[int | None, Any] = field(default_factory=dict)  # index → element (None: whole)
    good: list[str] = field(default_factory=list)  # event ids that must reach the webhook
    ignored: list[str] = field(default_factory=list)  # event ids that must not


# --- strategies ---------------------------------------------------------------------------------

EG_REQUIRED = ("id", "subject", "eventType", "eventTime")
CE_REQUIRED = ("id", "source", "specversion", "type")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_strings = json_values.filter(lambda v: not isinstance(v, str))
# no digit, so it can never be read as an ISO 8601 time
not_times = st.text(alphabet="abcxyzTZ :-.", max_size=30)


def _samples() -> list[dict[str, Any]]:
    """Every sample event object (shared samples and examples/events), batches flattened."""
    found = []
    for folder in (SHARED_SAMPLES, EXAMPLES / "events"):
        for path in sorted(folder.glob("*/*.json")):
            document = json.loads(path.read_text())
            found += document if isinstance(document, list) else [document]
    assert found, "no sample events found"
    return found


SAMPLES = _samples()
EG_SAMPLES = [s for s in SAMPLES if "eventType" in s]
CE_SAMPLES = [s for s in SAMPLES if "specversion" in s]


def _plain_event(cloudevents: bool) -> dict[str, Any]:
    if cloudevents:
        return {"specversion": "1.0", "source": TOPIC, "type": RUN_STATUS, "id": "x", "data": {}}
    return {"topic": TOPIC, "subject": "s", "eventType": RUN_STATUS, "eventTime": "", "id": "x"}


@st.composite
def goods(draw: st.DrawFn) -> Good:
    cloudevents = draw(st.booleans())
    base = draw(st.none() | st.sampled_from(CE_SAMPLES if cloudevents else EG_SAMPLES))
    depth = draw(st.integers(0, 300) | st.just(0))
    pad = draw(st.just(0) | st.integers(0, 200_000))
    return Good(cloudevents, base, depth, pad)


@st.composite
def wrong_types(draw: st.DrawFn) -> Bad:
    """A sample (or plain) event with one required field of the wrong type."""
    cloudevents = draw(st.booleans())
    event = copy.deepcopy(
        draw(st.sampled_from(CE_SAMPLES if cloudevents else EG_SAMPLES) | st.just(None))
        or _plain_event(cloudevents)
    )
    names = (
        [n for n in CE_REQUIRED if n != "specversion"] + ["subject"]
        if cloudevents
        else [*EG_REQUIRED, "topic", "dataVersion"]
    )
    name = draw(st.sampled_from(names))
    value = draw(not_strings)
    if name == "dataVersion" and value is None:
        value = 0  # a null dataVersion is allowed (read as "")
    if cloudevents and name == "subject" and value is None:
        value = []  # CloudEvents: any non-string subject is refused, null included
    event[name] = value
    return Bad(event, f"wrong_type:{name}")


@st.composite
def missing_fields(draw: st.DrawFn) -> Bad:
    """A sample event with one or more required fields removed."""
    cloudevents = draw(st.booleans())
    event = copy.deepcopy(draw(st.sampled_from(CE_SAMPLES if cloudevents else EG_SAMPLES)))
    required = CE_REQUIRED if cloudevents else EG_REQUIRED
    gone = draw(st.sets(st.sampled_from(required), min_size=1))
    for name in gone:
        event.pop(name, None)
    return Bad(event, "missing_field")


@st.composite
def bad_times(draw: st.DrawFn) -> Bad:
    cloudevents = draw(st.booleans())
    event = copy.deepcopy(draw(st.sampled_from(CE_SAMPLES if cloudevents else EG_SAMPLES)))
    event["time" if cloudevents else "eventTime"] = draw(not_times)
    return Bad(event, "bad_time")


@st.composite
def not_events(draw: st.DrawFn) -> Bad:
    """Any JSON value that is not an object, or an object with neither schema's marker."""
    value = draw(
        json_values.filter(lambda v: not isinstance(v, dict))
        | st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in ("eventType", "specversion")),
            json_values,
            max_size=5,
        )
    )
    return Bad(value, "not_an_event")


@st.composite
def huge_strings(draw: st.DrawFn) -> Bad:
    """Huge strings where an event's fields should be (and required fields missing)."""
    size = draw(st.integers(10_000, 300_000))
    letter = draw(st.sampled_from("xé✓"))
    shape = draw(st.sampled_from(["string", "eventType-only", "subject-number-id"]))
    if shape == "string":
        return Bad(letter * size, "huge_string")
    if shape == "eventType-only":
        return Bad({"eventType": letter * size}, "huge_string")
    return Bad({"eventType": RUN_STATUS, "id": 1, "subject": letter * size}, "huge_string")


bad_elements = wrong_types() | missing_fields() | bad_times() | not_events() | huge_strings()
ignored = st.builds(Ignored, st.booleans())
INVALID_UTF8 = (
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\xaf",  # overlong
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xe2\x82",  # truncated sequence
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
)


def _event_bytes(part: Part) -> bytes:
    """An ASCII JSON text of a part (ids are placeholders: the body is bad anyway)."""
    return json.dumps(_render_part(part, "placeholder", 0)).encode()


@st.composite
def truncated(draw: st.DrawFn) -> Raw:
    """A proper prefix of an event object's (or a batch's) JSON text: never valid JSON."""
    parts = draw(st.lists(goods() | bad_elements, min_size=1, max_size=3))
    text = (
        _event_bytes(parts[0])
        if len(parts) == 1
        else b"[" + b",".join(map(_event_bytes, parts)) + b"]"
    )
    cut = draw(st.integers(1, len(text) - 1))
    return Raw("truncated", text[:cut])


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Raw:
    """A good event's JSON text (pure ASCII) with an invalid UTF-8 sequence inserted."""
    text = _event_bytes(draw(goods().filter(lambda g: g.pad < 20_000)))
    at = draw(st.integers(0, len(text)))
    return Raw("invalid_utf8", text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:])


@st.composite
def deep_nesting(draw: st.DrawFn) -> Raw:
    """Nesting far beyond the parser's recursion limit (alone, or as an event's data)."""
    depth = draw(st.integers(2_000, 200_000))
    kind = draw(st.sampled_from(["arrays", "objects", "event-data"]))
    if kind == "arrays":
        return Raw("deep_nesting", b"[" * depth + b"]" * depth)
    if kind == "objects":
        return Raw("deep_nesting", b'{"a":' * depth + b"1" + b"}" * depth)
    head = _event_bytes(Good(cloudevents=False))[:-1]
    return Raw("deep_nesting", head + b', "data": ' + b"[" * depth + b"]" * depth + b"}")


@st.composite
def megabyte(draw: st.DrawFn) -> Raw:
    """~1 MB bodies (the producer refuses more than Event Hubs' 1 MB message size)."""
    size = draw(st.integers(900_000, 1_000_000))
    kind = draw(st.sampled_from(["not-utf8", "string", "padded-wrong-type", "unclosed"]))
    if kind == "not-utf8":
        return Raw("megabyte", b"\xff" * size)
    if kind == "string":
        return Raw("megabyte", b'"' + b"x" * (size - 2) + b'"')
    if kind == "padded-wrong-type":
        head = b'{"eventType": 7, "subject": "s", "id": "i", "eventTime": "2024-06-10T10:00:00Z", '
        return Raw("megabyte", head + b'"pad": "' + b"p" * (size - len(head) - 11) + b'"}')
    return Raw("megabyte", b'{"data": "' + b"u" * (size - 10))


odd_bodies = st.sampled_from(
    [
        Raw("odd", b""),
        Raw("odd", b" "),
        Raw("odd", b"null"),
        Raw("odd", b"[]"),
        Raw("odd", b"{}"),
        Raw("odd", b"NaN"),
        Raw("odd", b"1e999"),
        Raw("odd", b'"just a string"'),
        Raw("odd", b"\x00\x01\x02"),
        Raw("odd", b"\xef\xbb\xbf" + json.dumps(_plain_event(False)).encode()),  # BOM
    ]
)


@st.composite
def mixed_arrays(draw: st.DrawFn) -> Draft:
    """A batch with at least one good and one bad element (and maybe dropped ones)."""
    parts = (
        draw(st.lists(goods(), min_size=1, max_size=4))
        + draw(st.lists(bad_elements, min_size=1, max_size=4))
        + draw(st.lists(ignored, max_size=2))
    )
    return Draft("mixed_array", elements=tuple(draw(st.permutations(parts))))


MAX_BODY = 1_000_000  # bytes; Event Hubs Standard takes 1 MiB per message, headers included


def fits(draft: Draft) -> bool:
    """Whether the producer can send it at all (a bigger body never reaches a consumer)."""
    return len(render(draft, 0).payload) <= MAX_BODY


poison_drafts = st.one_of(
    truncated().map(lambda r: Draft(r.make, raw=r)),
    invalid_utf8().map(lambda r: Draft(r.make, raw=r)),
    deep_nesting().map(lambda r: Draft(r.make, raw=r)),
    odd_bodies.map(lambda r: Draft(r.make, raw=r)),
    # a JSON array as the whole body is a batch: each element is judged on its own
    bad_elements.filter(lambda b: not isinstance(b.value, list)).map(
        lambda b: Draft(b.why.split(":")[0], single=b)
    ),
    mixed_arrays(),
    st.lists(bad_elements, min_size=1, max_size=5).map(
        lambda bs: Draft("bad_array", elements=tuple(bs))
    ),
).filter(fits)


def collect(strategy: st.SearchStrategy[Draft], count: int) -> list[Draft]:
    """`count` examples chosen by hypothesis (derandomized: the same list on every run)."""
    found: list[Draft] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def draw(draft: Draft) -> None:
        found.append(draft)

    draw()
    return found


# --- rendering --------------------------------------------------------------------------------


def _nest(depth: int) -> Any:
    value: Any = {"leaf": True}
    for _ in range(depth):
        value = {"n": value}
    return value


def _render_part(part: Part, event_id: str, serial: int) -> Any:
    if isinstance(part, Bad):
        return part.value
    at = BASE_MS + serial
    time_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at // 1000)) + f".{at % 1000:03d}Z"
    subject = f"experiments/poison/runs/{event_id}"
    if isinstance(part, Ignored):
        event = _plain_event(False)
        event.update(id=event_id, subject=subject, eventTime=time_text)
        if part.foreign_topic:
            event["topic"] = FOREIGN_TOPIC
        else:
            event["eventType"] = "Microsoft.MachineLearningServices.SomethingElse"
        return event
    event = copy.deepcopy(part.base) if part.base else _plain_event(part.cloudevents)
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    data = {**data, "runStatus": "Running"}
    if part.depth:
        data["deep"] = _nest(part.depth)
    if part.pad:
        data["pad"] = "p" * part.pad
    event["data"] = data
    event["id"] = event_id
    event["subject"] = subject
    if part.cloudevents:
        event.update(source=TOPIC, type=RUN_STATUS, time=time_text)
    else:
        event.update(topic=TOPIC, eventType=RUN_STATUS, eventTime=time_text)
    return event


def render(draft: Draft, serial: int) -> Body:
    """The bytes of a draft, with unique ids (`poison-<serial>-<index>`), and its label."""
    if draft.raw is not None:
        return Body(draft.category, draft.raw.payload, bad={None: draft.raw.payload})
    body = Body(draft.category, b"")
    parts = [draft.single] if draft.single is not None else list(draft.elements)
    rendered = []
    for index, part in enumerate(parts):
        event_id = f"poison-{serial}-{index}"
        value = _render_part(part, event_id, serial)
        rendered.append(value)
        where = None if draft.single is not None else index
        if isinstance(part, Bad):
            body.bad[where] = value
        elif isinstance(part, Good):
            body.good.append(event_id)
        else:
            body.ignored.append(event_id)
    document = rendered[0] if draft.single is not None else rendered
    body.payload = json.dumps(document, ensure_ascii=False).encode()
    if draft.single is not None and None in body.bad:
        body.bad[None] = body.payload
    return body


def good_body(serial: int) -> Body:
    event_id = f"good-{serial}"
    value = _render_part(Good(cloudevents=serial % 3 == 0), event_id, serial)
    return Body("good", json.dumps(value).encode(), good=[event_id])


def build_bodies(seed: int = 11) -> list[Body]:
    """The poison drafts (plus the ~1 MB ones) rendered and shuffled among good bodies."""
    megabytes = max(2, int(POISON_BODIES * MEGABYTE_SHARE))
    drafts = collect(poison_drafts, POISON_BODIES - megabytes)
    drafts += [Draft("megabyte", raw=r) for r in collect(megabyte(), megabytes)]
    bodies = [render(d, n) for n, d in enumerate(drafts)]
    bodies += [good_body(len(drafts) + n) for n in range(GOOD_BODIES)]
    random.Random(seed).shuffle(bodies)
    return bodies


# --- the experiment -----------------------------------------------------------------------------


def test_poison_bodies_are_dead_lettered_where_they_were_read_and_good_events_act(
    tmp_path: Path, chaos_env: Env, webhook_peer: WebhookPeer
) -> None:
    """Hypothesis-made poison among good events, through dev-hub into one worker: no crash,
    each bad body or element dead-lettered once at its own partition, sequence number,
    offset (and array index), each good event POSTed, each dropped event neither."""
    started = time.monotonic()
    bodies = build_bodies()
    rng = random.Random(5)
    messages = [Message(str(rng.randrange(PARTITIONS)), b.payload, None, None) for b in bodies]
    rules = chaos_rules(tmp_path, grace="1s", forward=False)
    pool = WorkerPool(chaos_env, rules)
    worker = pool.start()
    published: dict[str, float] = {}  # good event id → when its message was accepted
    with Publisher(chaos_env.dev_hub.hub_connection_string()) as publisher:
        step = 50
        for start in range(0, len(messages), step):
            publisher.send(messages[start : start + step])
            now = time.time()
            published.update((i, now) for b in bodies[start : start + step] for i in b.good)

    # Where each body landed, read back from the hub: the i-th body sent to a partition.
    stored = sorted(read_hub(chaos_env.dev_hub.hub_connection_string()))
    by_lane: dict[str, list[tuple[int, str, bytes]]] = {}
    for partition, seq, offset, payload, _ in stored:
        by_lane.setdefault(partition, []).append((seq, offset, payload))
    where: list[tuple[str, int, str]] = []
    taken: Counter[str] = Counter()
    for message in messages:
        seq, offset, payload = by_lane[message.partition][taken[message.partition]]
        taken[message.partition] += 1
        assert payload == message.body, "the hub did not keep a body byte for byte"
        where.append((message.partition, seq, offset))
    assert sum(taken.values()) == len(stored)

    expected_dead = {
        (p, seq, index): (offset, value)
        for body, (p, seq, offset) in zip(bodies, where, strict=True)
        for index, value in body.bad.items()
    }
    good_ids = {i for b in bodies for i in b.good}
    ignored_ids = {i for b in bodies for i in b.ignored}

    def dead_letter_count() -> int:
        import asyncio

        return sum("/deadletter/" in name for name in asyncio.run(chaos_env.blobs()))

    def finished() -> bool:
        delivered = {d.event_id for d in webhook_peer.snapshot()}
        return good_ids <= delivered and dead_letter_count() >= len(expected_dead)

    try:
        wait_until(finished, 300 if SOAK else 90, "every good event and every dead letter")
    except AssertionError:
        missing = good_ids - {d.event_id for d in webhook_peer.snapshot()}
        raise AssertionError(
            f"{len(missing)} good events never arrived, {dead_letter_count()} of "
            f"{len(expected_dead)} dead letters; log tail:\n{worker.log_path.read_text()[-3000:]}"
        ) from None
    time.sleep(1)  # anything extra (a dropped event acted on, a repeat) would show by now
    assert worker.process.poll() is None, "the worker exited"
    assert not pool.crashed()

    listed = subprocess.run(
        [sys.executable, "-m", "worker", "deadletter", "list", "--json"],
        env=chaos_env.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    records = json.loads(listed.stdout)
    assert pool.stop(worker) == 0, worker.log_path.read_text()[-3000:]
    summary = worker.summary()
    elapsed = round(time.monotonic() - started, 2)

    found: dict[tuple[str, int, int | None], dict[str, Any]] = {}
    mislocated = []
    for record in records:
        source = record.get("source") or {}
        key = (source.get("partition_id"), source.get("sequence_number"), record.get("index"))
        assert record.get("kind") == "invalid_body", record.get("kind")
        assert key not in found, f"dead-lettered twice: {key}"
        found[key] = record
        if key not in expected_dead:
            mislocated.append(key)
            continue
        offset, value = expected_dead[key]
        if source.get("offset") != offset:
            mislocated.append(key)
        if not _same_body(record, key[2], value):
            mislocated.append(key)
    missing_dead = sorted(set(expected_dead) - set(found), key=str)
    delivered = Counter(d.event_id for d in webhook_peer.snapshot() if 200 <= d.status < 300)
    lost = good_ids - set(delivered)
    acted_on_dropped = ignored_ids & set(delivered)
    repeats = sum(n - 1 for n in delivered.values())
    first_at: dict[str, float] = {}
    for delivery in webhook_peer.snapshot():
        first_at.setdefault(delivery.event_id, delivery.at)
    lags = sorted(first_at[i] - published[i] for i in good_ids if i in first_at)
    errors = [
        line
        for w in chaos_env.workers
        for line in w.lines()
        if line.get("level") in ("error", "critical")
    ]

    categories = Counter(b.category for b in bodies)
    figures = Figures(
        "soak_poison",
        "full" if SOAK else "short",
        events=len(good_ids) + len(ignored_ids),
        messages=len(bodies),
        partitions=PARTITIONS,
        workers="1",
        expected_actions={HOOK_ACTION: len(good_ids)},
        lost={HOOK_ACTION: len(lost), "dead_letters": len(missing_dead)},
        raw_repeats_webhook=repeats,
        max_lag_s=round(lags[-1], 2) if lags else 0.0,
        p99_lag_s=round(lags[int(len(lags) * 0.99)], 2) if lags else 0.0,
        wall_time_s=elapsed,
        extra={
            "poison_bodies": sum(1 for b in bodies if b.bad),
            "bad_parts_expected": len(expected_dead),
            "dead_letters_found": len(records),
            "dead_letters_mislocated": len(mislocated),
            "megabyte_bodies": categories["megabyte"],
            "largest_body_bytes": max(len(b.payload) for b in bodies),
            "dropped_events_acted_on": len(acted_on_dropped),
            "worker_exits": 0 if worker.process.returncode == 0 else 1,
            "error_log_lines": len(errors),
            "categories": dict(sorted(categories.items())),
            "summary": {k: summary.get(k) for k in ("messages", "invalid", "dead_letters")},
        },
    )
    write_result(figures, tmp_path)
    assert not missing_dead, missing_dead[:5]
    assert not mislocated, mislocated[:5]
    assert not lost, sorted(lost)[:5]
    assert not acted_on_dropped, sorted(acted_on_dropped)[:5]
    assert not errors, errors[:3]
    assert summary["messages"] == len(bodies)
    assert summary["invalid"] == len(expected_dead) == summary["dead_letters"]


def _same_body(record: dict[str, Any], index: int | None, value: Any) -> bool:
    """The dead letter keeps the bad part: the whole body byte for byte (text or base64),
    or the array element as JSON."""
    if "body_base64" in record:
        stored = base64.b64decode(record["body_base64"])
    else:
        stored = record.get("body", "").encode("utf-8")
    if index is None:
        return stored == value
    return json.loads(stored) == value


def test_the_bodies_are_what_their_labels_say() -> None:
    """The pure decoder agrees with every label (the labels are made by construction, so a
    disagreement is a bug in one of the two), before any server is involved."""
    from worker.events import Origin, decode_body

    for body in build_bodies():
        events, rejections = decode_body(body.payload, Origin(partition_id="0", sequence_number=0))
        assert {r.index for r in rejections} == set(body.bad), (body.category, rejections)
        assert {e.id for e in events} == {*body.good, *body.ignored}, body.category
