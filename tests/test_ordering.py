"""Dedupe and reorder (DESIGN §4): ground truth from the samples, and properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TOPIC, eg, event_of
from worker.events import Origin
from worker.ordering import OrderingConfig, Sequencer

BASE = datetime(2024, 6, 10, 10, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ev(id: str, seconds: float, subject: str = "s1", type: str = "T", **kw):
    return event_of(eg(id, subject=subject, type=type, time=at(seconds), **kw))


def run(sequencer: Sequencer, events, flush: bool = True):
    """Push events; return (released ids in order, late ids, duplicate ids)."""
    released, late, dups = [], [], []
    for event in events:
        duplicate, out = sequencer.push(event)
        if duplicate:
            dups.append(event.id)
        for r in out:
            (late if r.late else released).append(r.event.id)
    if flush:
        for r in sequencer.flush():
            (late if r.late else released).append(r.event.id)
    return released, late, dups


@pytest.mark.parametrize(("grace", "key"), [(0, "grace_0s"), (5, "grace_5s"), (600, "grace_10m")])
def test_shared_sample_stream_ordering_matches_ground_truth(shared_samples, grace, key):
    """The documented outcome of ../shared/samples/stream.jsonl for three grace windows."""
    from worker.events import decode_body

    expected = json.loads((shared_samples / "stream.expected.json").read_text())
    truth = expected["ordering"][key]
    allowed = {t.casefold() for t in expected["allowed_topics"]}
    known = {
        f"Microsoft.MachineLearningServices.{t}".casefold() for t in expected["counts"]["by_type"]
    }
    sequencer = Sequencer(OrderingConfig(grace_s=grace))
    events = []
    for line in (shared_samples / "stream.jsonl").read_bytes().splitlines():
        decoded, _ = decode_body(line)
        events += [e for e in decoded if e.topic_key in allowed and e.type.casefold() in known]
    released, late, dups = run(sequencer, events)
    assert len(released) == truth["released"]
    assert sorted(late) == sorted(truth["stale_ids"])
    assert len(dups) == expected["counts"]["duplicates"]
    by_id = {e.id: e for e in events}
    run_a = [
        by_id[i].data["runStatus"]
        for i in released
        if "churn-train_1718013600_a1b2c3d4" in by_id[i].subject
        and by_id[i].type.endswith("RunStatusChanged")
    ]
    assert run_a == truth["run_A_RunStatusChanged_release_order"]


def test_events_wait_for_the_watermark():
    sequencer = Sequencer(OrderingConfig(grace_s=5))
    assert sequencer.push(ev("a", 0))[1] == []
    assert sequencer.push(ev("b", 3))[1] == []
    released = [r.event.id for r in sequencer.push(ev("c", 5))[1]]
    assert released == ["a"]  # watermark = 5 - 5 = 0
    assert sequencer.held == 2


def test_grace_zero_holds_nothing():
    sequencer = Sequencer(OrderingConfig(grace_s=0))
    assert [r.event.id for r in sequencer.push(ev("a", 10))[1]] == ["a"]
    out = sequencer.push(ev("b", 5))[1]
    assert [(r.event.id, r.late) for r in out] == [("b", True)]
    assert sequencer.held == 0


def test_stale_is_per_object_and_type():
    sequencer = Sequencer(OrderingConfig(grace_s=0))
    released, late, _ = run(
        sequencer,
        [ev("a", 10), ev("b", 5, type="Other"), ev("c", 5, subject="s2"), ev("d", 9)],
    )
    assert released == ["a", "b", "c"] and late == ["d"]


def test_duplicates_within_the_window_are_dropped_and_ids_are_per_topic():
    sequencer = Sequencer(OrderingConfig(grace_s=0, dedupe_window_s=60))
    other = event_of(eg("a", time=at(1), topic=TOPIC.replace("ws-demo", "ws-2")))
    recased = event_of(eg("a", time=at(2), topic=TOPIC.upper()))
    released, _, dups = run(sequencer, [ev("a", 0), other, recased, ev("a", 30)])
    assert released == ["a", "a"] and dups == ["a", "a"]


def test_ids_older_than_the_window_are_forgotten_in_event_time():
    sequencer = Sequencer(OrderingConfig(grace_s=0, dedupe_window_s=60))
    _, _, dups = run(sequencer, [ev("a", 0), ev("z", 61), ev("a", 62, subject="s9")])
    assert dups == []
    assert sequencer.remembered_ids == 2


def test_max_ids_caps_memory_oldest_first():
    sequencer = Sequencer(OrderingConfig(grace_s=0, max_ids=3))
    run(sequencer, [ev(f"e{i}", i, subject=f"s{i}") for i in range(5)])
    assert sequencer.remembered_ids == 3
    assert not sequencer.push(ev("e0", 10, subject="x"))[0]
    assert sequencer.push(ev("e4", 11, subject="y"))[0]


def test_state_is_bounded_over_a_long_stream():
    """Ids and last sequencers shrink as the watermark advances (memory stays flat)."""
    sequencer = Sequencer(OrderingConfig(grace_s=1, dedupe_window_s=100))
    for i in range(2000):
        sequencer.push(ev(f"e{i}", i, subject=f"obj{i % 300}"))
    assert sequencer.remembered_ids <= 102
    assert sequencer.remembered_objects <= 102
    assert sequencer.held <= 2


def test_far_future_event_time_is_clamped_to_enqueued_time():
    """One wrongly dated event must not flush the buffer (max_skew, DESIGN §4)."""
    enqueued = BASE + timedelta(seconds=1)
    sequencer = Sequencer(OrderingConfig(grace_s=5, max_skew_s=300))
    sequencer.push(ev("a", 0))
    future = event_of(eg("f", subject="s2", time=at(86_400)), Origin(enqueued_time=enqueued))
    assert sequencer.push(future)[1] == []
    assert sequencer.held == 2


def test_wall_clock_release_after_grace():
    sequencer = Sequencer(OrderingConfig(grace_s=5))
    now = datetime(2030, 1, 1, tzinfo=UTC)
    sequencer.push(ev("a", 0), now)
    sequencer.push(ev("b", 1), now + timedelta(seconds=3))
    assert sequencer.release_waited(now + timedelta(seconds=4)) == []
    out = sequencer.release_waited(now + timedelta(seconds=5))
    assert [r.event.id for r in out] == ["a"]
    out = sequencer.release_waited(now + timedelta(seconds=8))
    assert [r.event.id for r in out] == ["b"]


def test_data_sequencer_orders_with_left_padding():
    """Blob-style sequencers compare as strings padded to equal length."""
    sequencer = Sequencer(OrderingConfig(grace_s=100))
    events = [
        ev("x", 0, data={"sequencer": "10"}),
        ev("y", 1, data={"sequencer": "9"}),
        ev("z", 2, data={"sequencer": "011"}),
    ]
    released, late, _ = run(sequencer, events)
    assert released == ["y", "x", "z"] and late == []


def test_state_round_trip_continues_identically():
    """Exported mid-stream and restored, the sequencer decides exactly as if uninterrupted."""
    stream = [ev(f"e{i}", (i * 7) % 23, subject=f"s{i % 3}") for i in range(30)]
    stream += [ev("e3", 40, subject="s0"), ev("e29", 41, subject="s2")]
    whole = run(Sequencer(OrderingConfig(grace_s=6)), stream)
    first = Sequencer(OrderingConfig(grace_s=6))
    a = run(first, stream[:15], flush=False)
    restored = Sequencer.from_bytes(first.config, first.to_bytes())
    b = run(restored, stream[15:])
    assert (a[0] + b[0], a[1] + b[1], a[2] + b[2]) == whole


def test_snapshot_plus_deltas_restore_what_one_snapshot_would():
    """Periodic saves write only what changed; snapshot + deltas = the full state."""
    stream = [ev(f"e{i}", (i * 7) % 23, subject=f"s{i % 3}") for i in range(40)]
    live = Sequencer(OrderingConfig(grace_s=6))
    records = [live.snapshot()]
    for chunk in range(0, 30, 10):
        run(live, stream[chunk : chunk + 10], flush=False)
        records.append(live.delta())
    assert len(records[-1]["seen"]) == 10  # a delta carries only the last chunk's ids
    restored = Sequencer.restore(live.config, records)
    assert run(restored, stream[30:]) == run(live, stream[30:])


def test_newer_state_version_is_refused_clearly():
    import zlib

    data = zlib.compress(json.dumps({"version": 99}).encode())
    with pytest.raises(ValueError, match="format version 99"):
        Sequencer.from_bytes(OrderingConfig(), data)


# --- properties -------------------------------------------------------------------------

grace_s = 10


@st.composite
def jittered_streams(draw):
    """Events with distinct times on a few objects, arriving out of order within grace."""
    count = draw(st.integers(1, 40))
    offsets = draw(st.lists(st.integers(1, 30), min_size=count, max_size=count))
    objects = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=count, max_size=count))
    jitter = draw(
        st.lists(st.floats(0, grace_s - 0.01, allow_nan=False), min_size=count, max_size=count)
    )
    times, t = [], 0.0
    for offset in offsets:
        t += offset / 10
        times.append(t)
    events = [ev(f"e{i}", times[i], subject=objects[i]) for i in range(count)]
    arrival = sorted(range(count), key=lambda i: times[i] + jitter[i])
    return events, [events[i] for i in arrival]


@settings(max_examples=150, deadline=None)
@given(jittered_streams())
def test_any_arrival_permutation_within_grace_gives_the_same_per_object_order(stream):
    in_order, shuffled = stream
    expected = run(Sequencer(OrderingConfig(grace_s=grace_s)), in_order)
    actual = run(Sequencer(OrderingConfig(grace_s=grace_s)), shuffled)
    by_id = {e.id: e for e in in_order}

    def per_object(ids):
        result: dict[str, list[str]] = {}
        for i in ids:
            result.setdefault(by_id[i].subject, []).append(i)
        return result

    assert actual[1] == [] and expected[1] == []
    assert per_object(actual[0]) == per_object(expected[0])
    for ids in per_object(actual[0]).values():
        assert [by_id[i].time_ticks for i in ids] == sorted(by_id[i].time_ticks for i in ids)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=50),
    st.sampled_from([0, 3, 20]),
)
def test_every_event_comes_out_once_or_is_counted_dropped(ids, grace):
    """Each pushed event is a duplicate, released or late: exactly one, never lost; what is
    released (not late) is in time order per object."""
    sequencer = Sequencer(OrderingConfig(grace_s=grace, dedupe_window_s=50))
    # A redelivery is identical, so an id determines its time and object.
    events = [ev(f"id{n}", (n * 37) % 61, subject="abc"[n % 3]) for n in ids]
    released, late, dups = run(sequencer, events)
    assert len(released) + len(late) + len(dups) == len(events)
    assert sequencer.held == 0
    by_id = {e.id: e for e in events}
    per_object: dict[str, list[int]] = {}
    for i in released:
        per_object.setdefault(by_id[i].subject, []).append(by_id[i].time_ticks)
    for ticks in per_object.values():
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
