"""Hypothesis strategies for hostile event content (DESIGN §7), shared by the tests and the
longer fuzz run (`make fuzz`, tests/test_fuzz.py).

Everything a publisher controls is drawn from here: strings with private-use characters,
lone surrogates, CR/LF, reference and marker syntax, HTML; numbers past every range; times
at and past the ends of the calendar; deep nesting; large arrays; bodies that are not JSON
at all. A body is bytes exactly as Event Hubs would hand them to us.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.conftest import TOPIC
from tests.hostile_corpus import CASES, SECRET_ENV

__all__ = [
    "HOSTILE_NUMBERS",
    "deep_json",
    "deep_value",
    "hostile_bodies",
    "hostile_events",
    "hostile_text",
    "hostile_times",
    "hostile_values",
]

RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"

_PIECES = [
    "\ue000",
    "\ue001",
    "\ue002",
    "\udc80",
    "\ud800",
    "\uf8ff",
    "\ufffd",
    "\x00",
    "\r\n",
    "\n",
    "\r",
    ",",
    ";",
    "<script>",
    '"',
    "'",
    "{{",
    "}}",
    "{%",
    "${",
    "}",
    "a@example.com",
    "Eve <eve@example.net>",
    "Bcc: eve@example.net",
    *SECRET_ENV,
    *(f"${{{name}}}" for name in SECRET_ENV),
    *(f"\ue000{name}\ue001" for name in SECRET_ENV),
    "AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING",
    "\ue000AML_WORKER_EVENTHUB_CONNECTION_STRING\ue001",
]

hostile_text = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from(_PIECES),
            st.text(max_size=6),
            st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF).map(str),
            st.characters(min_codepoint=0xE000, max_codepoint=0xF8FF).map(str),
        ),
        max_size=10,
    ).map("".join),
    st.integers(1, 5).map(lambda n: "x" * (4096 * n)),  # long values
)

hostile_times = st.one_of(
    st.sampled_from(
        [
            "2024-06-10T10:00:00Z",
            "2024-06-10T10:00:00+99:99",
            "2024-06-10T10:00:00.99999999999999999999+23:59",
            "2024-06-10T10:00:00.1234567Z",
            "0001-01-01T00:00:00+01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:60Z",
            "9999-12-31T23:59:59.9999999Z",
            "9000-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-06-10T25:61:61Z",
            "not a time",
            "",
        ]
    ),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    hostile_text,
)

_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**30, max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, hostile_text)
hostile_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_events(draw: Any) -> dict[str, Any]:
    """An event object of either schema whose every publisher-set field is hostile."""
    topic = draw(st.sampled_from([TOPIC, TOPIC.upper(), "/subscriptions/other", ""]))
    event_type = draw(st.sampled_from([RUN_STATUS, RUN_STATUS.lower(), "Other.Type"]))
    event: dict[str, Any]
    if draw(st.booleans()):
        event = {
            "id": draw(hostile_text),
            "topic": topic,
            "subject": draw(hostile_text),
            "eventType": event_type,
            "eventTime": draw(hostile_times),
            "data": draw(
                st.dictionaries(st.sampled_from(["runStatus", "note", "to"]), hostile_values)
            ),
            "dataVersion": "2",
        }
    else:
        event = {
            "specversion": "1.0",
            "id": draw(hostile_text),
            "source": topic,
            "subject": draw(hostile_text),
            "type": event_type,
            "time": draw(hostile_times),
            "data": draw(hostile_values),
        }
    # Occasionally a field of the wrong type or missing.
    if draw(st.integers(0, 9)) == 0:
        key = draw(st.sampled_from(sorted(event)))
        if draw(st.booleans()):
            del event[key]
        else:
            event[key] = draw(hostile_values)
    return event


# JSON number texts past some range: NaN and the infinities are not JSON (RFC 8259) though
# Python's json reads them; 1e400 overflows a float; 4,300 digits is the interpreter's (and
# msgspec's) integer limit, so the first two must decode and the third must not.
HOSTILE_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "9" * 4300,
    "-" + "9" * 4300,
    "9" * 4301,
    "9" * 5000,
    "1." + "0" * 5000,
]


def deep_value(depth: int, leaf: Any = 0) -> Any:
    """`leaf` inside `depth` alternating lists and objects (no recursion to build it)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def deep_json(depth: int, leaf: str = "0") -> str:
    """`deep_value` as JSON text, built without `json.dumps` (which could not go as deep)."""
    opening = "".join("[" if level % 2 else '{"k":' for level in reversed(range(depth)))
    closing = "".join("]" if level % 2 else "}" for level in range(depth))
    return opening + leaf + closing


def _splice(text: str, raw: str) -> str:
    """Swap the first JSON string value for raw JSON text (NaN, a huge integer)."""
    start = text.find(': "')
    if start < 0:
        return text
    end = text.find('"', start + 3)
    while end > 0 and text[end - 1] == "\\":
        end = text.find('"', end + 1)
    return text if end < 0 else text[: start + 2] + raw + text[end + 1 :]


@st.composite
def hostile_bodies(draw: Any, *, extreme: bool = False) -> bytes:
    """One Event Hubs message body: JSON of hostile events, or worse.

    `extreme=True` adds heavier kinds: `data` at the decoder's depth limit, batches of
    hundreds of elements (bodies up to ~1 MB, Event Hubs' own limit) and raw UTF-8 (private
    use and invalid WTF-8 bytes rather than escapes). The pure core's tests take them
    (tests/test_hostile_core.py); a run through a hub may prefer the lighter default.
    """
    kind = draw(st.integers(0, 12 if extreme else 9))
    if kind <= 4:
        return json.dumps(draw(hostile_events())).encode()
    if kind == 5:
        elements = draw(st.lists(st.one_of(hostile_events(), hostile_values), max_size=20))
        return json.dumps(elements).encode()
    if kind == 6:
        raw = draw(st.sampled_from(HOSTILE_NUMBERS))
        return _splice(json.dumps(draw(hostile_events())), raw).encode()
    if kind == 7:
        depth = draw(st.integers(1, 50_000))
        return ("[" * depth + "]" * depth).encode()
    if kind == 8:
        return draw(st.binary(max_size=64))
    if kind == 10:
        # `data` about as deep as a decoder goes (~1,000 levels, less the caller's frames):
        # just inside, it reaches templates, filters and every encoder.
        event = draw(hostile_events())
        event["data"] = "@deep@"
        deep = deep_json(draw(st.integers(800, 1000)), json.dumps(draw(hostile_values)))
        return json.dumps(event).replace('"@deep@"', deep, 1).encode()
    if kind == 11:
        # A large batch: copies of a few elements (an event or a poison one), in order.
        elements = draw(
            st.lists(st.one_of(hostile_events(), hostile_values), min_size=1, max_size=3)
        )
        count = draw(st.integers(100, 1000))
        size = sum(len(json.dumps(element)) for element in elements) // len(elements)
        count = min(count, max(10, 1_000_000 // size))  # bodies up to ~1 MB, not 20
        return json.dumps([elements[i % len(elements)] for i in range(count)]).encode()
    if kind == 12:
        # Raw UTF-8 instead of \u escapes: private-use and CR/LF as bytes; a lone surrogate
        # as its (invalid) WTF-8 bytes, which is no UTF-8 at all.
        text = json.dumps(draw(hostile_events()), ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")
    return draw(st.sampled_from(CASES)).body.encode()
