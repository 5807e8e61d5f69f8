"""The pipeline's fast paths (issue 7) decide exactly as the general paths they shortcut.

Each fast path falls back to the general one whenever it is unsure; these tests hold the two
side by side: msgspec vs json for bodies and plan lines, the sliced RFC 3339 parser vs the
general time parser, direct template rendering vs Jinja, and the key lookups.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TOPIC, eg, event_of
from worker.events import MISSING, _fast_decode, decode_body, lookup_key, parse_time
from worker.plan import _encode, plan_rule
from worker.replay import json_line
from worker.rules import parse_rules
from worker.templates import RenderError, Template, template_context


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same JSON types all the way down (1 is not 1.0, True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


KEYS = st.text(max_size=8)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_msgspec_decodes_any_json_text_as_json_loads_does(value, ascii_only):
    """Big integers stay integers, floats round the same, escapes decode the same."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert _same(_fast_decode(text.encode()), json.loads(text))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": NaN}', "not standard JSON: 'NaN' is not a JSON number (RFC 8259)"),
        (b"[1e400]", "not standard JSON: number '1e400' is out of range"),
        (b'["\\ud800"]', "not an event: expected a JSON object, got a string"),
        (b"[-Infinity]", "not standard JSON: '-Infinity' is not a JSON number (RFC 8259)"),
        (b'{"id": "x"} trailing', "body is not JSON (Extra data at line 1 column 13)"),
        (b'{"id": "\xff"}', "body is not UTF-8 (invalid start byte at byte 8)"),
    ],
)
def test_bodies_msgspec_refuses_get_the_standard_librarys_answer(body, reason):
    """What json accepts but RFC 8259 does not (NaN, Infinity, 1e400) is rejected by name
    (DESIGN §7); lone surrogates decode; what is not JSON keeps json's located message."""
    events, rejections = decode_body(body)
    assert not events and len(rejections) == 1
    assert rejections[0].reason == reason or rejections[0].reason.startswith(reason)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=plain_values)
def test_msgspec_encodes_plain_trees_byte_for_byte_as_json_dumps(value):
    """Plan lines of actions without floats are encoded by msgspec: same bytes as json."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    assert _encode(value).decode("utf-8") == expected


RULES = f"""
version: 1
topics: ['{TOPIC}']
rules:
  - name: plain
    filter: {{includedEventTypes: [All]}}
    actions:
      - {{type: log, message: "{{{{ event.subject }}}} {{{{ data.runStatus }}}}"}}
  - name: with-float
    filter: {{includedEventTypes: [All]}}
    actions:
      - {{type: adf_pipeline, factory: f, pipeline: p, parameters: {{ratio: 1.0e-7}}}}
"""


@pytest.mark.parametrize("subject", ["runs/plain", "runs/lone-\ud800-surrogate"])
def test_plan_json_equals_json_line_of_plan_line(subject):
    """`plan_json` is `json_line(plan_line())`, floats and surrogates included (a lone
    surrogate as its JSON escape, so the line is always UTF-8, DESIGN §7)."""
    ruleset = parse_rules(RULES, "rules.yaml", secrets="ignore")
    event = event_of(eg("e1", subject=subject, data={"runStatus": "Failed"}))
    planned = [p for rule in ruleset.rules for p in plan_rule(rule, event)]
    assert [p.action.plain_params for p in planned] == [True, False]
    for action in planned:
        line = action.plan_line()
        assert action.plan_json() == json_line(line)
        assert json.loads(action.plan_json()) == json.loads(json_line(line))
        action.plan_json().encode("utf-8")
    assert '"ratio":1e-07' in planned[1].plan_json()


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    digits=st.integers(min_value=0, max_value=9),
    extra=st.integers(min_value=0, max_value=10**9 - 1),
    zone=st.sampled_from(["Z", "+00:00"]),
)
def test_rfc3339_fast_path_equals_the_general_parser(moment, digits, extra, zone):
    """Event Grid's own form is parsed by slicing; a trailing space forces the regex path."""
    fraction = f".{extra:09d}"[: digits + 1] if digits else ""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + fraction + zone
    assert parse_time(text) == parse_time(text + " ")
    assert parse_time(text)[0].tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["2026-02-30T00:00:00Z", "2026-03-02T24:00:00Z", "2026-03-02T09:00:60Z"]
)
def test_out_of_range_fields_take_the_general_path(text):
    """The fast path never decides an invalid or leap-second time: the general parser does."""
    try:
        expected: Any = parse_time(text + " ")
    except ValueError as exc:
        expected = str(exc).replace(repr(text + " "), repr(text))
        with pytest.raises(ValueError) as raised:
            parse_time(text)
        assert str(raised.value) == expected
    else:
        assert parse_time(text) == expected


DATA = {
    "runId": "r-1",
    "runTags": {"team": "risk", "Owner": None},
    "list": [{"x": 1}, 2],
    "items": "shadowed by dict.items",
    "_private": "p",
    "num": 0.72,
    "flag": True,
}
TEMPLATES = [
    "{{ data.runId }}",
    "{{data.RUNID}} and {{ data.runTags.owner }}",
    "{{ data.runTags }} {{ data.list }} {{ data.num }} {{ data.flag }}",
    "{{ data }}",
    "{{ data.items }}",
    "{{ data._private }}",
    "{{ data.list.x }}",
    "{{ data.missing }}",
    "{{ data.runId.upper }}",
    "{{ event.subject }} {{ event.Subject }} {{ event.ID }} {{ event.time }}",
    "{{ event.late }} {{ event.schema }} {{ event.extensions }} {{ event.data.runId }}",
    "{{ event.offset }} {{ event.sequence_number }} {{ event.data_version }}",
    "{{ event }}",
    "{{ event.keys }}",
    "{{ event.nope }}",
    "{{ rule }}",
    "{{ rule.upper }}",
    "{ {{ data.runId }}",
    "{{ data.runId }}}",
    "a\r\n{{ data.runId }}",
    "{{ data.runId | upper }}",
    "{{- data.runId }}",
    "{{ data . runId }}",
    "{% if data.flag %}{{ data.runId }}{% endif %}",
    "{{ range }}",
    "\ue000SECRET\ue001 {{ data.runId }}",
]


def _render(template: Template, context: Any) -> str:
    try:
        return template.render(context)
    except RenderError as exc:
        return f"RenderError: {exc}"


@pytest.mark.parametrize("source", TEMPLATES)
@pytest.mark.parametrize("data", [DATA, "not an object", None])
def test_direct_rendering_equals_jinja(source, data):
    """The direct form renders what Jinja renders; where it cannot, Jinja does."""
    template = Template.compile(source)
    for schema in ("eventgrid", "cloudevents"):
        if schema == "eventgrid":
            event = event_of(eg("e1", subject="runs/A", data=data))
        else:
            event = event_of(
                {
                    "specversion": "1.0", "id": "c1", "source": TOPIC, "type": "T",
                    "subject": "runs/A", "time": "2026-03-02T09:00:00Z", "data": data,
                    "myext": "v",
                }
            )  # fmt: skip
        lazy = template_context(event, "my-rule")
        assert _render(template, lazy) == _render(template, dict(lazy.as_dict()))


def test_simple_references_use_the_direct_form():
    """Guard for the test above: the common templates do take the direct path."""
    assert Template.compile("{{ data.runId }} on {{ event.subject }}")._direct is not None
    assert Template.compile("{{ rule }}: {{ data.a.b.c }}")._direct is not None
    assert Template.compile("{{ data.runId | upper }}")._direct is None
    assert Template.compile("{{ range }}")._direct is None


@pytest.mark.parametrize(
    ("keys", "wanted", "found"),
    [
        (["straße"], "STRASSE", "straße"),  # casefold lengthens the stored key
        (["STRASSE"], "straße", "STRASSE"),  # ...or the wanted one
        (["ModelName", "modelname"], "MODELNAME", "ModelName"),  # first match wins
        (["runStatusX"], "runstatus", None),
        ([1, "A"], "a", "A"),
    ],
)
def test_lookup_key_case_insensitive_matches(keys, wanted, found):
    """Skipping keys longer than the wanted one never skips a match."""
    result = lookup_key({k: k for k in keys}, wanted)
    assert (None if result is MISSING else result) == found
