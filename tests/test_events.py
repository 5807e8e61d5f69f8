"""Decoding message bodies: both schemas, batches, times, rejections (DESIGN §2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLES, TOPIC, ce, eg, event_of
from worker.events import MISSING, Origin, Schema, decode_body, lookup_data, parse_time


def test_eventgrid_event_is_normalised():
    """Event Grid fields map onto the normalised event, with origin attached."""
    origin = Origin(partition_id="3", offset="120", sequence_number=7)
    event = event_of(eg("id-1", data={"runStatus": "Failed"}), origin)
    assert (event.id, event.topic, event.type) == ("id-1", TOPIC, eg()["eventType"])
    assert event.schema is Schema.EVENTGRID
    assert event.data == {"runStatus": "Failed"}
    assert event.data_version == "2"
    assert event.partition_id == "3" and event.sequence_number == 7


def test_cloudevent_is_normalised_with_extensions():
    """source → topic, type → type; unknown attributes are kept as extensions."""
    event = event_of(ce("c-9", myext="v", datacontenttype="application/json"))
    assert event.topic == TOPIC and event.schema is Schema.CLOUDEVENTS
    assert event.extensions == {"myext": "v", "datacontenttype": "application/json"}


def test_schema_is_detected_per_event_in_a_mixed_array():
    body = json.dumps([eg("a"), ce("b")]).encode()
    events, rejections = decode_body(body)
    assert [e.schema for e in events] == [Schema.EVENTGRID, Schema.CLOUDEVENTS]
    assert rejections == []


def test_bad_array_elements_are_rejected_one_by_one():
    """Good events in a batch still flow; each bad element gets its own rejection."""
    bad = eg("b")
    del bad["eventTime"]
    body = json.dumps([eg("a"), bad, 42, ce("c")]).encode()
    events, rejections = decode_body(body, Origin(line=4))
    assert [e.id for e in events] == ["a", "c"]
    assert [r.index for r in rejections] == [1, 2]
    assert "eventTime" in rejections[0].reason
    assert "line 4, array element 1" in rejections[0].describe()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"id": "x", "eventType": ', "not JSON"),
        (b"[]", "empty JSON array"),
        (b'"just a string"', "expected a JSON object"),
        (b'{"hello": "world"}', "neither 'specversion'"),
        (json.dumps({k: v for k, v in eg().items() if k != "id"}).encode(), "'id'"),
        (json.dumps({k: v for k, v in eg().items() if k != "subject"}).encode(), "'subject'"),
        (json.dumps({k: v for k, v in ce().items() if k != "source"}).encode(), "'source'"),
        (json.dumps({**eg(), "eventTime": "yesterday"}).encode(), "eventTime"),
        (json.dumps({**eg(), "id": 5}).encode(), "'id' must be a string"),
    ],
)
def test_bad_bodies_become_rejections(body, reason):
    events, rejections = decode_body(body)
    assert events == []
    assert len(rejections) == 1 and reason in rejections[0].reason


def test_missing_dataversion_is_empty_as_event_grid_stamps_it():
    obj = eg()
    del obj["dataVersion"]
    assert event_of(obj).data_version == ""


def test_cloudevent_without_time_takes_enqueued_time_and_without_subject_empty():
    enqueued = datetime(2024, 6, 10, 9, 0, tzinfo=UTC)
    obj = ce(time=None)
    del obj["subject"]
    event = event_of(obj, Origin(enqueued_time=enqueued))
    assert event.time == enqueued and event.subject == ""


def test_cloudevent_without_time_in_file_takes_previous_event_time():
    body = json.dumps([eg(time="2024-06-10T10:00:00.5Z"), ce(time=None)]).encode()
    events, _ = decode_body(body)
    assert events[1].time_ticks == events[0].time_ticks


def test_cloudevent_data_base64_is_kept():
    obj = ce()
    del obj["data"]
    obj["data_base64"] = "aGVsbG8="
    assert event_of(obj).data == "aGVsbG8="


@pytest.mark.parametrize(
    ("text", "expected_ticks_fraction", "offset_hours"),
    [
        ("2024-06-10T10:12:03.7654321Z", 7654321, 0),
        ("2024-06-10T10:12:03.765432+00:00", 7654320, 0),
        ("2024-06-10T12:12:03.5+02:00", 5000000, 2),
        ("2024-06-10T05:12:03-05:00", 0, -5),
        ("2024-06-10t10:12:03.123456789z", 1234567, 0),
    ],
)
def test_times_keep_seven_digits_and_any_offset(text, expected_ticks_fraction, offset_hours):
    moment, ticks = parse_time(text)
    assert moment.tzinfo is not None
    assert ticks % 10_000_000 == expected_ticks_fraction
    local = moment.astimezone(timezone(timedelta(hours=offset_hours)))
    assert local.hour == int(text[11:13])
    assert moment.astimezone(UTC).hour == 10


def test_seven_digit_times_order_exactly():
    """Two times 100 ns apart differ in ticks although datetime cannot tell them apart."""
    _, a = parse_time("2024-06-10T10:00:00.0000001Z")
    _, b = parse_time("2024-06-10T10:00:00.0000002Z")
    assert b - a == 1


def test_data_lookup_exact_then_case_insensitive():
    data = {"modelName": "a", "ModelName": "b", "Tags": {"Stage": "prod"}}
    assert lookup_data(data, "ModelName") == "b"
    assert lookup_data(data, "MODELNAME") == "a"
    assert lookup_data(data, "tags.stage") == "prod"
    assert lookup_data(data, "tags.missing") is MISSING
    assert lookup_data("not an object", "x") is MISSING


def test_duplicate_member_names_last_wins():
    body = b'{"id":"x","subject":"s","eventType":"t","eventTime":"2024-01-01T00:00:00Z",'
    body += b'"data":{"k":1,"k":2}}'
    events, _ = decode_body(body)
    assert events[0].data == {"k": 2}


def test_all_example_events_decode():
    """The project's own sample events decode in both schemas."""
    files = sorted((EXAMPLES / "events").rglob("*.json"))
    assert len(files) >= 10
    for path in files:
        events, rejections = decode_body(path.read_bytes())
        assert events and not rejections, path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_never_raise(body):
    events, rejections = decode_body(body)
    assert events or rejections


@settings(max_examples=300)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries({}, optional={k: json_values for k in eg()}),
        st.fixed_dictionaries({}, optional={k: json_values for k in ce()}),
        st.lists(st.fixed_dictionaries({}, optional={k: json_values for k in eg()}), max_size=3),
    )
)
def test_any_json_never_raises_and_every_element_is_accounted(document):
    events, rejections = decode_body(json.dumps(document).encode())
    expected = len(document) if isinstance(document, list) and document else 1
    assert len(events) + len(rejections) == expected


def test_a_str_body_with_a_lone_surrogate_is_a_rejection_not_a_crash():
    """A caller may hand a str; one that UTF-8 cannot encode is not UTF-8 (DESIGN §7)."""
    events, rejections = decode_body(json.dumps(eg(subject="runs/\udc80"), ensure_ascii=False))
    assert not events and [r.reason.split(" (")[0] for r in rejections] == ["body is not UTF-8"]


def test_a_reason_quotes_a_long_value_cut():
    """A publisher's megabyte "time" is named in a line, not copied into every dead letter
    and log line."""
    _, [rejection] = decode_body(json.dumps(eg(time="2024-06-10T10:00:00" + "x" * 1_000_000)))
    assert len(rejection.reason) < 300 and "(1000019 characters)" in rejection.reason
    assert rejection.reason.startswith("Event Grid field 'eventTime': not an ISO 8601 time: ")
