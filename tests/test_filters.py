"""Event Grid event-subscription filter semantics (DESIGN §3, eventgrid-facts §c).

Tables come from the Event Grid docs' own examples and from the project decisions where the docs
are silent; every table runs on Event Grid and CloudEvents 1.0 events alike. Expected outcomes
are written out literally here, never derived from the module's own operator sets.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.events import MISSING, Event, decode_body
from worker.filters import (
    MULTI_VALUE_OPERATORS,
    NO_VALUE_OPERATORS,
    NOT_OPERATORS,
    NUMBER_OPERATORS,
    RANGE_OPERATORS,
    SINGLE_VALUE_OPERATORS,
    STRING_OPERATORS,
    AdvancedFilter,
    ClauseResult,
    Filter,
    Operator,
    is_data_key,
    is_envelope_key,
    is_extension_key,
    resolve_key,
)

Op = Operator
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/ws"
)
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
SCHEMAS = ["eventgrid", "cloudevents"]
_NO_DATA = object()


def decode(obj: Any) -> Event:
    """The one event a JSON body decodes to, as the pipeline would see it."""
    events, rejections = decode_body(json.dumps(obj).encode())
    assert not rejections, rejections
    assert len(events) == 1
    return events[0]


def make(
    schema: str,
    data: Any = _NO_DATA,
    *,
    subject: str = "experiments/exp-1/runs/run-1",
    event_type: str = RUN_STATUS_CHANGED,
    **extensions: Any,
) -> Event:
    """An event of `schema` with the given data; extra keywords become CloudEvents extensions."""
    if schema == "eventgrid":
        obj: dict[str, Any] = {
            "id": "e1",
            "topic": TOPIC,
            "subject": subject,
            "eventType": event_type,
            "eventTime": "2024-05-01T10:00:00.1234567Z",
            "dataVersion": "2",
            "metadataVersion": "1",
        }
    else:
        obj = {
            "specversion": "1.0",
            "id": "e1",
            "source": TOPIC,
            "subject": subject,
            "type": event_type,
            "time": "2024-05-01T10:00:00.1234567Z",
            **extensions,
        }
    if data is not _NO_DATA:
        obj["data"] = data
    return decode(obj)


def af(op: Operator | str, key: str, *values: Any) -> AdvancedFilter:
    return AdvancedFilter(Operator(op), key, tuple(values))


def D(text: str) -> Decimal:
    return Decimal(text)


# --- 1. the docs' examples ---------------------------------------------------------------------

OR_SUBJECT = af(
    Op.STRING_CONTAINS,
    "Subject",
    "/providers/microsoft.devtestlab/",
    "/providers/Microsoft.Compute/virtualMachines/",
)
AND_SUBJECT = (
    af(Op.STRING_CONTAINS, "Subject", "/providers/microsoft.devtestlab/"),
    af(Op.STRING_CONTAINS, "Subject", "/providers/Microsoft.Compute/virtualMachines/"),
)
SUB = "/subscriptions/s/resourceGroups/rg"
DEVTESTLAB = f"{SUB}/providers/Microsoft.DevTestLab/labs/lab1"
COMPUTE = f"{SUB}/providers/microsoft.compute/virtualmachines/vm1"
STORAGE = f"{SUB}/providers/Microsoft.Storage/storageAccounts/sa"
BOTH = (
    f"{SUB}/providers/Microsoft.DevTestLab/labs/lab1/providers/Microsoft.Compute/virtualMachines/vm"
)

NUMBER_IN = af(Op.NUMBER_IN, "data.counter", D("5"), D("1"))
NUMBER_NOT_IN = af(Op.NUMBER_NOT_IN, "data.counter", D("41"), D("0"))
LESS = af(Op.NUMBER_LESS_THAN, "data.counter", D("100"))
GREATER = af(Op.NUMBER_GREATER_THAN, "data.counter", D("20"))
LESS_EQ = af(Op.NUMBER_LESS_THAN_OR_EQUALS, "data.counter", D("100"))
GREATER_EQ = af(Op.NUMBER_GREATER_THAN_OR_EQUALS, "data.counter", D("30"))
IN_RANGE = af(Op.NUMBER_IN_RANGE, "data.key1", (D("3.14159"), D("999.95")), (D("3000"), D("4000")))
BOOL = af(Op.BOOL_EQUALS, "data.isEnabled", True)
CONTAINS = af(Op.STRING_CONTAINS, "data.key1", "microsoft", "azure")
NOT_CONTAINS = af(Op.STRING_NOT_CONTAINS, "data.key1", "contoso", "fabrikam")
BEGINS = af(Op.STRING_BEGINS_WITH, "data.key1", "event", "message")
ENDS = af(Op.STRING_ENDS_WITH, "data.key1", "jpg", "jpeg", "png")
STRING_IN = af(Op.STRING_IN, "data.key1", "contoso", "fabrikam", "factory")
STRING_NOT_IN = af(Op.STRING_NOT_IN, "data.key1", "aws", "bridge")
IS_NULL = af(Op.IS_NULL_OR_UNDEFINED, "data.key1")

DOC_VECTORS = [
    # (name, advanced filters, data, subject or None, expected)
    ("NumberIn 5", (NUMBER_IN,), {"counter": 5}, None, True),
    ("NumberIn 1", (NUMBER_IN,), {"counter": 1}, None, True),
    ("NumberIn 1.0", (NUMBER_IN,), {"counter": 1.0}, None, True),
    ("NumberIn 3", (NUMBER_IN,), {"counter": 3}, None, False),
    ("NumberNotIn 41", (NUMBER_NOT_IN,), {"counter": 41}, None, False),
    ("NumberNotIn 0", (NUMBER_NOT_IN,), {"counter": 0}, None, False),
    ("NumberNotIn 5", (NUMBER_NOT_IN,), {"counter": 5}, None, True),
    ("NumberLessThan 99", (LESS,), {"counter": 99}, None, True),
    ("NumberLessThan 99.99", (LESS,), {"counter": 99.99}, None, True),
    ("NumberLessThan 100", (LESS,), {"counter": 100}, None, False),
    ("NumberLessThan 101", (LESS,), {"counter": 101}, None, False),
    ("NumberGreaterThan 21", (GREATER,), {"counter": 21}, None, True),
    ("NumberGreaterThan 20", (GREATER,), {"counter": 20}, None, False),
    ("NumberGreaterThan 20.5", (GREATER,), {"counter": 20.5}, None, True),
    ("NumberLessThanOrEquals 100", (LESS_EQ,), {"counter": 100}, None, True),
    ("NumberLessThanOrEquals 100.0", (LESS_EQ,), {"counter": 100.0}, None, True),
    ("NumberLessThanOrEquals 101", (LESS_EQ,), {"counter": 101}, None, False),
    ("NumberGreaterThanOrEquals 30", (GREATER_EQ,), {"counter": 30}, None, True),
    ("NumberGreaterThanOrEquals 29.9", (GREATER_EQ,), {"counter": 29.9}, None, False),
    ("NumberInRange low bound", (IN_RANGE,), {"key1": 3.14159}, None, True),
    ("NumberInRange high bound", (IN_RANGE,), {"key1": 999.95}, None, True),
    ("NumberInRange inside", (IN_RANGE,), {"key1": 500}, None, True),
    ("NumberInRange second range", (IN_RANGE,), {"key1": 3500}, None, True),
    ("NumberInRange 4000", (IN_RANGE,), {"key1": 4000}, None, True),
    ("NumberInRange below", (IN_RANGE,), {"key1": 3.14158}, None, False),
    ("NumberInRange between", (IN_RANGE,), {"key1": 1000}, None, False),
    ("NumberInRange above", (IN_RANGE,), {"key1": 4000.0001}, None, False),
    ("BoolEquals true", (BOOL,), {"isEnabled": True}, None, True),
    ("BoolEquals false", (BOOL,), {"isEnabled": False}, None, False),
    ("StringContains azure", (CONTAINS,), {"key1": "azure data factory"}, None, True),
    ("StringContains MICROSOFT", (CONTAINS,), {"key1": "MICROSOFT Fabric"}, None, True),
    ("StringContains none", (CONTAINS,), {"key1": "google cloud"}, None, False),
    ("StringNotContains contoso", (NOT_CONTAINS,), {"key1": "Contoso Ltd"}, None, False),
    ("StringNotContains none", (NOT_CONTAINS,), {"key1": "microsoft"}, None, True),
    ("StringBeginsWith event", (BEGINS,), {"key1": "event hubs"}, None, True),
    ("StringBeginsWith Message", (BEGINS,), {"key1": "Message queue"}, None, True),
    ("StringBeginsWith inside", (BEGINS,), {"key1": "hubs event"}, None, False),
    ("StringEndsWith png", (ENDS,), {"key1": "eventgrid.png"}, None, True),
    ("StringEndsWith JPG", (ENDS,), {"key1": "photo.JPG"}, None, True),
    ("StringEndsWith pdf", (ENDS,), {"key1": "doc.pdf"}, None, False),
    ("StringIn Contoso", (STRING_IN,), {"key1": "Contoso"}, None, True),
    ("StringIn factory", (STRING_IN,), {"key1": "factory"}, None, True),
    ("StringIn substring", (STRING_IN,), {"key1": "contoso ltd"}, None, False),
    ("StringNotIn aws", (STRING_NOT_IN,), {"key1": "aws"}, None, False),
    ("StringNotIn AWS", (STRING_NOT_IN,), {"key1": "AWS"}, None, False),
    ("StringNotIn azure", (STRING_NOT_IN,), {"key1": "azure"}, None, True),
    ("IsNullOrUndefined undefined", (IS_NULL,), {"key2": 5}, None, True),
    ("IsNullOrUndefined null", (IS_NULL,), {"key1": None}, None, True),
    ("IsNullOrUndefined value", (IS_NULL,), {"key1": "value"}, None, False),
    ("IsNullOrUndefined zero", (IS_NULL,), {"key1": 0}, None, False),
    ("OR devtestlab", (OR_SUBJECT,), {}, DEVTESTLAB, True),
    ("OR compute", (OR_SUBJECT,), {}, COMPUTE, True),
    ("OR storage", (OR_SUBJECT,), {}, STORAGE, False),
    ("AND both", AND_SUBJECT, {}, BOTH, True),
    ("AND devtestlab only", AND_SUBJECT, {}, DEVTESTLAB, False),
    ("AND compute only", AND_SUBJECT, {}, COMPUTE, False),
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("filters", "data", "subject", "expected"),
    [pytest.param(*vector[1:], id=vector[0]) for vector in DOC_VECTORS],
)
def test_doc_examples(schema, filters, data, subject, expected):
    """Every example of the Event Grid filtering page, on both schemas."""
    kwargs = {"subject": subject} if subject else {}
    event = make(schema, data, **kwargs)
    flt = Filter(advanced_filters=filters)
    assert flt.matches(event) is expected
    assert all(r.passed for r in flt.explain(event)) is expected


# --- 2. missing keys, wrong types, arrays ------------------------------------------------------

ONE_OPERAND = {
    Op.NUMBER_IN: (D("5"),),
    Op.NUMBER_NOT_IN: (D("5"),),
    Op.NUMBER_LESS_THAN: (D("5"),),
    Op.NUMBER_GREATER_THAN: (D("5"),),
    Op.NUMBER_LESS_THAN_OR_EQUALS: (D("5"),),
    Op.NUMBER_GREATER_THAN_OR_EQUALS: (D("5"),),
    Op.NUMBER_IN_RANGE: ((D("0"), D("10")),),
    Op.NUMBER_NOT_IN_RANGE: ((D("0"), D("10")),),
    Op.BOOL_EQUALS: (True,),
    Op.STRING_CONTAINS: ("x",),
    Op.STRING_NOT_CONTAINS: ("x",),
    Op.STRING_BEGINS_WITH: ("x",),
    Op.STRING_NOT_BEGINS_WITH: ("x",),
    Op.STRING_ENDS_WITH: ("x",),
    Op.STRING_NOT_ENDS_WITH: ("x",),
    Op.STRING_IN: ("x",),
    Op.STRING_NOT_IN: ("x",),
    Op.IS_NULL_OR_UNDEFINED: (),
    Op.IS_NOT_NULL: (),
}

# Verbatim from the docs, plus the project's decision for the range pair and the null checks.
MISSING_KEY_OUTCOME = {
    "NumberGreaterThan": False,
    "NumberGreaterThanOrEquals": False,
    "NumberLessThan": False,
    "NumberLessThanOrEquals": False,
    "NumberIn": False,
    "BoolEquals": False,
    "StringContains": False,
    "StringNotContains": False,
    "StringBeginsWith": False,
    "StringNotBeginsWith": False,
    "StringEndsWith": False,
    "StringNotEndsWith": False,
    "StringIn": False,
    "NumberInRange": False,
    "NumberNotIn": True,
    "StringNotIn": True,
    "NumberNotInRange": True,
    "IsNullOrUndefined": True,
    "IsNotNull": False,
}

NOT_NAMES = {
    "NumberNotIn",
    "NumberNotInRange",
    "StringNotContains",
    "StringNotBeginsWith",
    "StringNotEndsWith",
    "StringNotIn",
}


def test_tables_cover_every_operator():
    """The tables below must not silently skip an operator."""
    assert set(MISSING_KEY_OUTCOME) == {o.value for o in Operator}
    assert set(ONE_OPERAND) == set(Operator)


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("data", [{"other": 1}, {"KEY": {"x": 1}}, "text", None, [1, 2], _NO_DATA])
@pytest.mark.parametrize("name", sorted(MISSING_KEY_OUTCOME))
def test_missing_key(schema, data, name):
    """A key that is absent (or below a non-object) has the documented outcome per operator."""
    op = Operator(name)
    flt = AdvancedFilter(op, "data.key.inner", ONE_OPERAND[op])
    event = make(schema, data)
    expected = MISSING_KEY_OUTCOME[name]
    for arrays in (False, True):
        assert flt.matches(event, arrays=arrays) is expected
        result = flt.explain(event, arrays=arrays)
        assert result.passed is expected
        assert result.looked_at is MISSING
        assert result.reason.startswith("key is missing")


def _wrong_values(op: Operator) -> list[Any]:
    common = [None, {"a": 1}, [5, "x", True]]  # the array is wrong-typed with arrays off
    if op.value.startswith("Number"):
        return [*common, True, False, "5", "0"]
    if op.value.startswith("String"):
        return [*common, 5, 1.5, True]
    return [*common, 1, 0, "true"]  # BoolEquals


WRONG_TYPE_CASES = [
    pytest.param(op, value, id=f"{op.value}-{json.dumps(value)}")
    for op in Operator
    if op.value not in ("IsNullOrUndefined", "IsNotNull")
    for value in _wrong_values(op)
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(("op", "value"), WRONG_TYPE_CASES)
def test_wrong_type_is_ignored(schema, op, value):
    """A wrong-typed value: positive operators do not match, Not operators match."""
    flt = AdvancedFilter(op, "data.key", ONE_OPERAND[op])
    event = make(schema, {"key": value})
    expected = op.value in NOT_NAMES
    assert flt.matches(event) is expected
    result = flt.explain(event)
    assert result.passed is expected
    assert result.looked_at == value
    assert "ignores it" in result.reason


def test_number_operand_is_not_matched_by_a_stringified_number():
    """Numbers are not stringified (nor strings parsed), whatever the CloudEvents doc implies."""
    event = make("cloudevents", {"n": 5, "s": "5"})
    assert not af(Op.STRING_BEGINS_WITH, "data.n", "5", "1").matches(event)
    assert not af(Op.STRING_IN, "data.n", "5").matches(event)
    assert not af(Op.NUMBER_IN, "data.s", D("5")).matches(event)
    assert af(Op.NUMBER_IN, "data.n", D("5")).matches(event)


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("value", "null_or_undefined", "not_null"),
    [
        (None, True, False),
        ("", False, True),
        (0, False, True),
        (False, False, True),
        ([], False, True),
        ([None], False, True),
        ({}, False, True),
        ({"a": None}, False, True),
    ],
)
def test_null_checks(schema, value, null_or_undefined, not_null):
    """IsNullOrUndefined is true only for null (or missing); IsNotNull for any present non-null."""
    event = make(schema, {"key1": value})
    for arrays in (False, True):
        assert af(Op.IS_NULL_OR_UNDEFINED, "data.key1").matches(event, arrays=arrays) is (
            null_or_undefined
        )
        assert af(Op.IS_NOT_NULL, "data.key1").matches(event, arrays=arrays) is not_null
    assert af(Op.IS_NOT_NULL, "data.absent").matches(event) is False


ARRAY_CASES = [
    # (filter, array, expected with arrays on, expected with arrays off)
    (af(Op.STRING_IN, "data.tags", "failed"), ["running", "Failed"], True, False),
    (af(Op.STRING_IN, "data.tags", "failed"), ["running", "queued"], False, False),
    (af(Op.STRING_NOT_IN, "data.tags", "aws", "bridge"), ["azure", "AWS"], False, True),
    (af(Op.STRING_NOT_IN, "data.tags", "aws", "bridge"), ["azure", "gcp"], True, True),
    (af(Op.STRING_CONTAINS, "data.tags", "zur"), ["aws", "Azure"], True, False),
    (af(Op.STRING_NOT_CONTAINS, "data.tags", "zur"), ["aws", "Azure"], False, True),
    (af(Op.STRING_BEGINS_WITH, "data.tags", "ev"), ["x", "Events"], True, False),
    (af(Op.STRING_NOT_BEGINS_WITH, "data.tags", "ev"), ["x", "Events"], False, True),
    (af(Op.STRING_ENDS_WITH, "data.tags", ".png"), ["a.jpg", "b.PNG"], True, False),
    (af(Op.STRING_NOT_ENDS_WITH, "data.tags", ".png"), ["a.jpg", "b.PNG"], False, True),
    (af(Op.NUMBER_IN, "data.tags", D("5")), [1, 5.0], True, False),
    (af(Op.NUMBER_NOT_IN, "data.tags", D("5")), [1, 5], False, True),
    (af(Op.NUMBER_NOT_IN, "data.tags", D("5")), [1, 2], True, True),
    (af(Op.NUMBER_GREATER_THAN, "data.tags", D("10")), [1, 11], True, False),
    (af(Op.NUMBER_LESS_THAN, "data.tags", D("0")), [1, 11], False, False),
    (af(Op.NUMBER_IN_RANGE, "data.tags", (D("2"), D("3"))), [1, 2.5], True, False),
    (af(Op.NUMBER_NOT_IN_RANGE, "data.tags", (D("2"), D("3"))), [1, 2.5], False, True),
    (af(Op.NUMBER_NOT_IN_RANGE, "data.tags", (D("2"), D("3"))), [1, 4], True, True),
    (af(Op.BOOL_EQUALS, "data.tags", False), [True, False], True, False),
    # mixed types: wrong-typed elements (numbers, null, objects, nested arrays) are ignored
    (af(Op.STRING_IN, "data.tags", "failed"), [1, None, {"a": "failed"}, "FAILED"], True, False),
    (af(Op.STRING_IN, "data.tags", "failed"), [["failed"], {"failed": 1}, None, 3], False, False),
    (af(Op.STRING_NOT_IN, "data.tags", "failed"), [["failed"], {"x": "failed"}, None], True, True),
    (af(Op.NUMBER_IN, "data.tags", D("1")), [True, "1", None, [1]], False, False),
    (af(Op.NUMBER_NOT_IN, "data.tags", D("1")), [True, "1", None, [1]], True, True),
    (af(Op.BOOL_EQUALS, "data.tags", True), [1, "true", None], False, False),
    # an empty array: positive operators do not match, Not operators do
    (af(Op.STRING_IN, "data.tags", "x"), [], False, False),
    (af(Op.STRING_NOT_IN, "data.tags", "x"), [], True, True),
    (af(Op.STRING_NOT_CONTAINS, "data.tags", "x"), [], True, True),
    (af(Op.NUMBER_IN_RANGE, "data.tags", (D("0"), D("1"))), [], False, False),
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(("flt", "array", "with_arrays", "without_arrays"), ARRAY_CASES)
def test_arrays(schema, flt, array, with_arrays, without_arrays):
    """enableAdvancedFilteringOnArrays: any element matches; Not fails if any element matches."""
    event = make(schema, {"tags": array})
    assert flt.matches(event, arrays=True) is with_arrays
    assert flt.matches(event, arrays=False) is without_arrays
    assert flt.explain(event, arrays=True).passed is with_arrays
    assert flt.explain(event, arrays=False).passed is without_arrays
    on = Filter(enable_advanced_filtering_on_arrays=True, advanced_filters=(flt,))
    off = Filter(advanced_filters=(flt,))
    assert on.matches(event) is with_arrays
    assert off.matches(event) is without_arrays


def test_arrays_flag_leaves_scalars_alone():
    """With the flag on, a scalar value is judged exactly as with it off."""
    event = make("eventgrid", {"status": "Failed"})
    flt = af(Op.STRING_IN, "data.status", "failed")
    assert flt.matches(event, arrays=True)
    assert not af(Op.STRING_NOT_IN, "data.status", "failed").matches(event, arrays=True)


# --- numbers compare as decimals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "value", "expected"),
    [
        (af(Op.NUMBER_IN, "data.v", D("0.3")), 0.3, True),
        (af(Op.NUMBER_IN, "data.v", D("0.3")), 0.30000000000000004, False),
        (af(Op.NUMBER_LESS_THAN_OR_EQUALS, "data.v", D("0.3")), 0.30000000000000004, False),
        (af(Op.NUMBER_GREATER_THAN, "data.v", D("0.3")), 0.30000000000000004, True),
        (af(Op.NUMBER_GREATER_THAN_OR_EQUALS, "data.v", D("0.1")), 0.1, True),
        (af(Op.NUMBER_LESS_THAN, "data.v", D("0.1")), 0.1, False),
        # the float nearest to 0.1 is a little above 0.1, but a JSON 0.1 means 0.1
        (af(Op.NUMBER_GREATER_THAN, "data.v", D("0.1")), 0.1, False),
        (af(Op.NUMBER_IN, "data.v", D("100000000000000000001")), 100000000000000000001, True),
        (af(Op.NUMBER_IN, "data.v", D("100000000000000000001")), 100000000000000000000, False),
        (af(Op.NUMBER_GREATER_THAN, "data.v", D("1e20")), 100000000000000000001, True),
        (af(Op.NUMBER_IN, "data.v", D("-0")), 0.0, True),
        (af(Op.NUMBER_IN, "data.v", D("1e400")), 1e308, False),
        (af(Op.NUMBER_LESS_THAN, "data.v", D("1e400")), 1e308, True),
        (af(Op.NUMBER_GREATER_THAN, "data.v", D("1e-400")), 5e-324, True),
        (af(Op.NUMBER_IN_RANGE, "data.v", (D("0.1"), D("0.2"))), 0.1, True),
        (af(Op.NUMBER_IN_RANGE, "data.v", (D("0.1"), D("0.2"))), 0.2, True),
        (af(Op.NUMBER_IN_RANGE, "data.v", (D("0.1"), D("0.2"))), 0.20000000000000001, True),
        (af(Op.NUMBER_IN_RANGE, "data.v", (D("0.1"), D("0.2"))), 0.20000000000000004, False),
    ],
)
def test_numbers_compare_as_decimals(flt, value, expected):
    """A JSON number means its decimal text, not its nearest binary float. (NaN and
    Infinity never reach a filter: decoding rejects them, DESIGN §7.)"""
    event = make("eventgrid", {"v": value})
    assert flt.matches(event) is expected
    assert flt.matches(event, arrays=True) is expected
    assert flt.explain(event).passed is expected


def _float_bounds() -> st.SearchStrategy[Decimal]:
    """Bounds on, between and next to floats, where a float shortcut would go wrong."""
    finite = st.floats(allow_nan=False, allow_infinity=False)
    return st.one_of(
        finite.map(lambda f: Decimal(repr(f))),
        finite.map(Decimal),  # the float's exact binary value: not its shortest repr
        finite.map(lambda f: Decimal(repr(math.nextafter(f, math.inf)))),
        st.decimals(allow_nan=False, allow_infinity=False, places=20),
        st.decimals(allow_nan=False, allow_infinity=False),
    )


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    bound=_float_bounds(),
    other=_float_bounds(),
)
@example(value=0.1, bound=Decimal.from_float(0.1), other=Decimal("0.1"))
@example(value=1e308, bound=Decimal("1e400"), other=Decimal("-1e400"))
def test_number_operators_agree_with_decimal_arithmetic(value, bound, other):
    """Every number operator decides as Decimal(repr(value)) would, floats or ints."""
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    low, high = min(bound, other), max(bound, other)
    expected = {
        Op.NUMBER_IN: number in (bound, other),
        Op.NUMBER_NOT_IN: number not in (bound, other),
        Op.NUMBER_LESS_THAN: number < bound,
        Op.NUMBER_GREATER_THAN: number > bound,
        Op.NUMBER_LESS_THAN_OR_EQUALS: number <= bound,
        Op.NUMBER_GREATER_THAN_OR_EQUALS: number >= bound,
        Op.NUMBER_IN_RANGE: low <= number <= high,
        Op.NUMBER_NOT_IN_RANGE: not low <= number <= high,
    }
    operands = {
        Op.NUMBER_IN: (bound, other),
        Op.NUMBER_NOT_IN: (bound, other),
        Op.NUMBER_IN_RANGE: ((low, high),),
        Op.NUMBER_NOT_IN_RANGE: ((low, high),),
    }
    event = make("eventgrid", {"v": value})
    for op, want in expected.items():
        flt = AdvancedFilter(op, "data.v", operands.get(op, (bound,)))
        assert flt.matches(event) is want, op
        assert flt.matches(event, arrays=True) is want, op
        assert flt.explain(event).passed is want, op


# --- 3. keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Subject", "experiments/exp-1/runs/run-1"),
        ("subject", "experiments/exp-1/runs/run-1"),
        ("SUBJECT", "experiments/exp-1/runs/run-1"),
        ("ID", "e1"),
        ("id", "e1"),
        ("EventType", RUN_STATUS_CHANGED),
        ("eventtype", RUN_STATUS_CHANGED),
        ("type", RUN_STATUS_CHANGED),
        ("Type", RUN_STATUS_CHANGED),
        ("Topic", TOPIC),
        ("source", TOPIC),
        ("Source", TOPIC),
        ("data", {"Key1": "v1", "nested": {"Deep": {"x": 7}}}),
        ("Data.Key1", "v1"),
        ("data.key1", "v1"),
        ("DATA.KEY1", "v1"),
        ("data.nested.deep.X", 7),
        ("Data.Nested.Deep", {"x": 7}),
        ("data.nested.deep.x.y", MISSING),
        ("data.Key1.more", MISSING),
        ("data.absent", MISSING),
    ],
)
def test_keys_resolve_on_both_schemas(schema, key, expected):
    """Envelope names of either schema work on both; `data` and its segments case-insensitively."""
    event = make(schema, {"Key1": "v1", "nested": {"Deep": {"x": 7}}})
    assert resolve_key(event, key) == expected
    if expected is MISSING:
        assert resolve_key(event, key) is MISSING


def test_schema_specific_envelope_keys():
    """specversion only exists on CloudEvents; dataVersion is the normalised data_version."""
    eg, ce = make("eventgrid", {}), make("cloudevents", {}, dataversion="3")
    assert resolve_key(ce, "specversion") == "1.0"
    assert resolve_key(ce, "SpecVersion") == "1.0"
    assert resolve_key(eg, "specversion") is MISSING
    assert resolve_key(eg, "DataVersion") == "2"
    assert resolve_key(ce, "dataVersion") == "3"
    assert af(Op.STRING_IN, "specversion", "1.0").matches(ce)
    assert not af(Op.STRING_IN, "specversion", "1.0").matches(eg)
    assert af(Op.STRING_NOT_IN, "specversion", "1.0").matches(eg)
    assert af(Op.STRING_IN, "dataVersion", "2").matches(eg)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_envelope_filters_on_both_schemas(schema):
    """Filters on envelope keys, written either schema's way, match the same events."""
    event = make(schema, {})
    assert af(Op.STRING_IN, "EventType", RUN_STATUS_CHANGED.upper()).matches(event)
    assert af(Op.STRING_IN, "type", RUN_STATUS_CHANGED.lower()).matches(event)
    assert af(Op.STRING_ENDS_WITH, "source", "/workspaces/WS").matches(event)
    assert af(Op.STRING_ENDS_WITH, "topic", "/workspaces/ws").matches(event)
    assert af(Op.STRING_IN, "ID", "E1").matches(event)
    assert not af(Op.STRING_IN, "ID", "e2").matches(event)
    assert af(Op.STRING_BEGINS_WITH, "Subject", "Experiments/").matches(event)
    assert not af(Op.STRING_BEGINS_WITH, "subject", "models/").matches(event)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("data.ModelName", "b"),  # exact match first
        ("data.modelName", "a"),
        ("data.MODELNAME", "a"),  # no exact match: the first case-insensitive one, in order
        ("data.modelname", "a"),
    ],
)
def test_data_segments_exact_first_then_first_in_document_order(key, expected):
    """The AML samples mix `modelName` and `ModelName`: exact wins, then document order."""
    event = make("eventgrid", {"modelName": "a", "ModelName": "b"})
    assert resolve_key(event, key) == expected
    assert af(Op.STRING_IN, key, expected).matches(event)


def test_nested_data_segments_exact_first():
    """Exact-first applies at every depth, independently per segment."""
    data = {"ModelTags": {"stage": "x", "Stage": "y"}, "modelTags": {"stage": "z"}}
    event = make("cloudevents", data)
    assert resolve_key(event, "data.ModelTags.Stage") == "y"
    assert resolve_key(event, "data.ModelTags.STAGE") == "x"
    assert resolve_key(event, "data.modeltags.stage") == "x"  # first of the two objects
    assert resolve_key(event, "data.modelTags.Stage") == "z"
    assert af(Op.STRING_IN, "data.MODELTAGS.stage", "X").matches(event)


def test_extension_keys():
    """Other top-level CloudEvents attributes are extensions; Event Grid events have none."""
    ce = make("cloudevents", {}, myextension="Hello", priority=3)
    eg = make("eventgrid", {})
    assert resolve_key(ce, "myextension") == "Hello"
    assert resolve_key(ce, "MyExtension") == "Hello"
    assert resolve_key(eg, "myextension") is MISSING
    assert af(Op.STRING_IN, "myextension", "hello").matches(ce)
    assert not af(Op.STRING_IN, "myextension", "hello").matches(eg)
    assert af(Op.STRING_NOT_IN, "myextension", "hello").matches(eg)  # why check-rules warns
    assert af(Op.NUMBER_GREATER_THAN, "priority", D("2")).matches(ce)
    assert resolve_key(ce, "time") is MISSING  # `time` is not a filter key


@pytest.mark.parametrize(
    ("key", "envelope", "data", "extension"),
    [
        ("ID", True, False, False),
        ("Subject", True, False, False),
        ("eventType", True, False, False),
        ("TYPE", True, False, False),
        ("topic", True, False, False),
        ("Source", True, False, False),
        ("dataVersion", True, False, False),
        ("specversion", True, False, False),
        ("data", False, True, False),
        ("Data", False, True, False),
        ("Data.Key1", False, True, False),
        ("data.a.b.c", False, True, False),
        ("dataschema", False, False, True),
        ("datakey", False, False, True),
        ("myextension", False, False, True),
        ("metadataVersion", False, False, True),
    ],
)
def test_key_kinds(key, envelope, data, extension):
    """Each key is exactly one of envelope, data or extension."""
    assert is_envelope_key(key) is envelope
    assert is_data_key(key) is data
    assert is_extension_key(key) is extension


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("begins", "ends", "case_sensitive", "subject", "expected"),
    [
        ("", "", False, "anything", True),
        ("", "", True, "anything", True),
        ("experiments/", "", False, "experiments/e/runs/r", True),
        ("Experiments/", "", False, "experiments/e/runs/r", True),
        ("Experiments/", "", True, "experiments/e/runs/r", False),
        ("experiments/", "", True, "experiments/e/runs/r", True),
        ("models/", "", False, "experiments/e/runs/r", False),
        ("", "/RUNS/R", False, "experiments/e/runs/r", True),
        ("", "/RUNS/R", True, "experiments/e/runs/r", False),
        ("", "/runs/r", True, "experiments/e/runs/r", True),
        ("experiments/", ":1", False, "experiments/e/runs/r", False),
        ("models/", ":1", False, "models/m:1", True),
        ("models/mymodelname", "", False, "models/mymodelname2:1", True),  # no word boundary
        ("models/m:1/x", "", False, "models/m:1", False),
    ],
)
def test_subject_filters(schema, begins, ends, case_sensitive, subject, expected):
    """Prefix and suffix, empty = everything, case-insensitive unless isSubjectCaseSensitive."""
    flt = Filter(
        subject_begins_with=begins, subject_ends_with=ends, is_subject_case_sensitive=case_sensitive
    )
    event = make(schema, {}, subject=subject)
    assert flt.matches(event) is expected
    assert all(r.passed for r in flt.explain(event)) is expected


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (None, True),
        ((RUN_STATUS_CHANGED,), True),
        ((RUN_STATUS_CHANGED.lower(),), True),
        (("Microsoft.MachineLearningServices.RunCompleted", RUN_STATUS_CHANGED.upper()), True),
        (("Microsoft.MachineLearningServices.RunCompleted",), False),
        (("Microsoft.MachineLearningServices.RunStatus",), False),
        (("All",), True),
        (("all",), True),
        (("ALL", "Other.Type"), True),
        ((), False),
    ],
)
def test_included_event_types(schema, types, expected):
    """Exact type match, case-insensitive; `All` (any casing) means every type."""
    flt = Filter(included_event_types=types)
    event = make(schema, {})
    for _ in range(2):  # a second call is answered from the per-filter cache
        assert flt.matches(event) is expected
        assert flt.matches_type(event.type) is expected
    assert all(r.passed for r in flt.explain(event)) is expected


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("data", [{}, None, "text", [1, {"a": 2}], {"key1": None}, 5])
def test_empty_filter_matches_everything(schema, data):
    """An empty filter matches every event; explain then has no clauses."""
    event = make(schema, data)
    assert Filter().matches(event)
    assert Filter().explain(event) == []


def test_all_clauses_are_anded():
    """One failing clause of any kind fails the whole filter."""
    event = make("eventgrid", {"runStatus": "Failed", "n": 3}, subject="experiments/e/runs/r")
    clauses = {
        "included_event_types": (RUN_STATUS_CHANGED,),
        "subject_begins_with": "experiments/",
        "subject_ends_with": "/r",
        "advanced_filters": (
            af(Op.STRING_IN, "data.runStatus", "failed"),
            af(Op.NUMBER_IN_RANGE, "data.n", (D("1"), D("5"))),
        ),
    }
    assert Filter(**clauses).matches(event)
    failing = {
        "included_event_types": ("Other.Type",),
        "subject_begins_with": "models/",
        "subject_ends_with": "/x",
        "advanced_filters": (
            af(Op.STRING_IN, "data.runStatus", "failed"),
            af(Op.NUMBER_IN_RANGE, "data.n", (D("4"), D("5"))),
        ),
    }
    for name, bad in failing.items():
        assert not Filter(**{**clauses, name: bad}).matches(event), name


# --- explain -----------------------------------------------------------------------------------


def test_explain_lists_each_set_clause_in_order():
    """One result per clause that is set: types, begins, ends, then each advanced filter."""
    event = make("cloudevents", {"runStatus": "Failed"}, subject="experiments/e/runs/r")
    flt = Filter(
        included_event_types=(RUN_STATUS_CHANGED,),
        subject_begins_with="Experiments/",
        subject_ends_with="/x",
        advanced_filters=(
            af(Op.STRING_IN, "data.runStatus", "Failed", "Canceled"),
            af(Op.STRING_IN, "data.missing", "x"),
            af(Op.STRING_NOT_IN, "data.runStatus", "failed"),
        ),
    )
    results = flt.explain(event)
    assert all(isinstance(r, ClauseResult) for r in results)
    assert [r.clause for r in results] == [
        "includedEventTypes",
        "subjectBeginsWith",
        "subjectEndsWith",
        "advancedFilters[0] StringIn data.runStatus",
        "advancedFilters[1] StringIn data.missing",
        "advancedFilters[2] StringNotIn data.runStatus",
    ]
    assert [r.passed for r in results] == [True, True, False, True, False, False]
    assert [r.looked_at for r in results] == [
        RUN_STATUS_CHANGED,
        "experiments/e/runs/r",
        "experiments/e/runs/r",
        "Failed",
        MISSING,
        "Failed",
    ]
    assert results[3].reason == "'Failed' is one of ['Failed', 'Canceled'] (case-insensitive)"
    assert results[4].reason == "key is missing: StringIn does not match a missing key"
    assert "so StringNotIn does not match" in results[5].reason
    assert "does not end with '/x'" in results[2].reason
    assert not flt.matches(event)


@pytest.mark.parametrize(
    ("flt", "data", "arrays", "phrase"),
    [
        (af(Op.NUMBER_LESS_THAN, "data.v", D("100")), {"v": 99}, False, "99 is less than 100"),
        (af(Op.NUMBER_LESS_THAN, "data.v", D("100")), {"v": 150}, False, "is not less than 100"),
        (af(Op.NUMBER_IN_RANGE, "data.v", (D("1"), D("2"))), {"v": 1.5}, False, "range [1, 2]"),
        (af(Op.STRING_CONTAINS, "data.v", "azure"), {"v": "Azure ML"}, False, "contains 'azure'"),
        (af(Op.STRING_IN, "data.v", "x"), {"v": None}, False, "null, not a string"),
        (af(Op.STRING_IN, "data.v", "x"), {"v": ["x"]}, False, "enableAdvancedFilteringOnArrays"),
        (af(Op.STRING_IN, "data.v", "x"), {"v": [1, "X"]}, True, "element 1 ('X')"),
        (af(Op.STRING_NOT_IN, "data.v", "x"), {"v": ["y"]}, True, "so StringNotIn matches"),
        (af(Op.STRING_IN, "data.v", "x"), {"v": []}, True, "the array is empty"),
        (af(Op.NUMBER_NOT_IN, "data.v", D("1")), {}, False, "NumberNotIn matches a missing key"),
        (af(Op.IS_NOT_NULL, "data.v"), {"v": None}, False, "value is null"),
    ],
)
def test_explain_reasons(flt, data, arrays, phrase):
    """Reasons are plain sentences naming what was compared and why."""
    assert phrase in flt.explain(make("eventgrid", data), arrays=arrays).reason


# --- construction ----------------------------------------------------------------------------


def test_operator_groups():
    """The public operator groups, as Event Grid documents which take `value` or `values`."""
    assert {o.value for o in SINGLE_VALUE_OPERATORS} == {
        "NumberLessThan",
        "NumberGreaterThan",
        "NumberLessThanOrEquals",
        "NumberGreaterThanOrEquals",
        "BoolEquals",
    }
    assert {o.value for o in RANGE_OPERATORS} == {"NumberInRange", "NumberNotInRange"}
    assert {o.value for o in NO_VALUE_OPERATORS} == {"IsNullOrUndefined", "IsNotNull"}
    assert {o.value for o in MULTI_VALUE_OPERATORS} == {
        "NumberIn",
        "NumberNotIn",
        "StringContains",
        "StringNotContains",
        "StringBeginsWith",
        "StringNotBeginsWith",
        "StringEndsWith",
        "StringNotEndsWith",
        "StringIn",
        "StringNotIn",
    }
    assert {o.value for o in NOT_OPERATORS} == NOT_NAMES
    assert len(NUMBER_OPERATORS) == 8 and all(o.startswith("Number") for o in NUMBER_OPERATORS)
    assert len(STRING_OPERATORS) == 8 and all(o.startswith("String") for o in STRING_OPERATORS)
    assert len(Operator) == 19


@pytest.mark.parametrize(
    ("op", "values"),
    [
        (Op.NUMBER_IN, ()),
        (Op.NUMBER_IN, ("5",)),
        (Op.NUMBER_IN, (True,)),
        (Op.NUMBER_IN, (D("NaN"),)),
        (Op.NUMBER_LESS_THAN, (D("1"), D("2"))),
        (Op.NUMBER_IN_RANGE, ((D("2"), D("1")),)),
        (Op.NUMBER_IN_RANGE, (D("1"),)),
        (Op.NUMBER_IN_RANGE, ((D("1"), D("2"), D("3")),)),
        (Op.BOOL_EQUALS, ("true",)),
        (Op.STRING_IN, (5,)),
        (Op.STRING_IN, ()),
        (Op.IS_NOT_NULL, ("x",)),
    ],
)
def test_invalid_operands_are_refused(op, values):
    """Operands that do not fit the operator never make a filter (the loader locates them)."""
    with pytest.raises(ValueError):
        AdvancedFilter(op, "data.x", values)


def test_construction_normalises_and_compares_by_value():
    """Operator names, int/float operands and lists are normalised; filters are hashable."""
    made = AdvancedFilter("NumberIn", "data.x", [5, 1.5])  # type: ignore[arg-type]
    assert made.operator is Op.NUMBER_IN
    assert made.values == (D("5"), D("1.5"))
    assert made == af(Op.NUMBER_IN, "data.x", D("5"), D("1.5"))
    one = Filter(included_event_types=["A"], advanced_filters=[made])  # type: ignore[arg-type]
    two = Filter(included_event_types=("A",), advanced_filters=(made,))
    assert one == two and hash(one) == hash(two)
    assert len({one, two}) == 1
    with pytest.raises(ValueError):
        AdvancedFilter("NumberBetween", "data.x", (1,))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AdvancedFilter(Op.STRING_IN, "", ("x",))


# --- 4. properties -------------------------------------------------------------------------

SEGMENTS = ["a", "A", "b", "key1", "Key1"]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([0.5, 1.5, 2.5, 0.1, 0.3, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),  # decoding rejects the others (§7)
    st.text(alphabet="aAbBsSß.", max_size=4),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(SEGMENTS), inner, max_size=4)
    ),
    max_leaves=12,
)
filter_keys = st.sampled_from(
    [
        "data",
        "data.a",
        "Data.A",
        "data.a.b",
        "data.A.key1",
        "data.key1",
        "data.b.a",
        "subject",
        "ID",
        "type",
        "source",
        "specversion",
        "dataVersion",
        "myext",
        "MyExt",
    ]
)
number_operands = st.one_of(
    st.integers(-3, 3).map(Decimal),
    st.sampled_from(["0.5", "1.5", "2.5", "0.1", "0.3", "1e400"]).map(Decimal),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
string_operands = st.text(alphabet="aAbBsSß.", min_size=1, max_size=3)


@st.composite
def advanced_filters(draw: st.DrawFn, key: st.SearchStrategy[str] = filter_keys) -> AdvancedFilter:
    op = draw(st.sampled_from(list(Operator)))
    if op.value in ("IsNullOrUndefined", "IsNotNull"):
        values: tuple[Any, ...] = ()
    elif op.value in ("NumberInRange", "NumberNotInRange"):
        pairs = draw(st.lists(st.tuples(number_operands, number_operands), min_size=1, max_size=3))
        values = tuple((min(p), max(p)) for p in pairs)
    elif op.value == "BoolEquals":
        values = (draw(st.booleans()),)
    elif op.value.startswith("Number"):
        size = 1 if op in SINGLE_VALUE_OPERATORS else draw(st.integers(1, 3))
        values = tuple(draw(st.lists(number_operands, min_size=size, max_size=size)))
    else:
        values = tuple(draw(st.lists(string_operands, min_size=1, max_size=3)))
    return AdvancedFilter(op, draw(key), values)


@st.composite
def events(draw: st.DrawFn, data: st.SearchStrategy[Any] = json_values) -> Event:
    schema = draw(st.sampled_from(SCHEMAS))
    extensions = {"myext": draw(json_values)} if draw(st.booleans()) else {}
    subject = draw(st.text(alphabet="aAbB/:", max_size=6))
    event_type = draw(st.sampled_from(["A.B", "a.b", "C"]))
    return make(schema, draw(data), subject=subject, event_type=event_type, **extensions)


filters = st.builds(
    Filter,
    included_event_types=st.none() | st.lists(st.sampled_from(["A.B", "c", "All"])).map(tuple),
    subject_begins_with=st.text(alphabet="aAbB/", max_size=2),
    subject_ends_with=st.text(alphabet="aAbB/", max_size=2),
    is_subject_case_sensitive=st.booleans(),
    enable_advanced_filtering_on_arrays=st.booleans(),
    advanced_filters=st.lists(advanced_filters(), max_size=4).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(flt=filters, event=events())
def test_matches_never_raises_and_agrees_with_explain(flt, event):
    """Any filter on any JSON: no exception, and explain reaches the same verdict as matches."""
    verdict = flt.matches(event)
    results = flt.explain(event)
    assert all(r.passed for r in results) is verdict
    assert all(isinstance(r.reason, str) and r.reason for r in results)
    arrays = flt.enable_advanced_filtering_on_arrays
    advanced_results = results[len(results) - len(flt.advanced_filters) :]
    for advanced, result in zip(flt.advanced_filters, advanced_results, strict=True):
        assert advanced.matches(event, arrays=arrays) is result.passed
        value = resolve_key(event, advanced.key)
        if not isinstance(value, list):  # the arrays flag only changes anything for arrays
            assert advanced.matches(event, arrays=True) is advanced.matches(event, arrays=False)


TWINS = [
    (Op.STRING_NOT_IN, Op.STRING_IN),
    (Op.STRING_NOT_CONTAINS, Op.STRING_CONTAINS),
    (Op.STRING_NOT_BEGINS_WITH, Op.STRING_BEGINS_WITH),
    (Op.STRING_NOT_ENDS_WITH, Op.STRING_ENDS_WITH),
    (Op.NUMBER_NOT_IN, Op.NUMBER_IN),
    (Op.NUMBER_NOT_IN_RANGE, Op.NUMBER_IN_RANGE),
]
numbers = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([0.5, 1.5, 2.5, 0.1, 0.3, -0.0, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def twin_cases(draw: st.DrawFn) -> tuple[AdvancedFilter, AdvancedFilter, Any]:
    """A Not operator, its positive twin with the same operands, and a right-typed value."""
    negative, positive = draw(st.sampled_from(TWINS))
    if positive.value.startswith("String"):
        values = tuple(draw(st.lists(string_operands, min_size=1, max_size=3)))
        value = draw(st.text(alphabet="aAbBsSß.", max_size=5))
    elif positive is Op.NUMBER_IN:
        values = tuple(draw(st.lists(number_operands, min_size=1, max_size=3)))
        value = draw(numbers | st.sampled_from(values).map(int_or_float))
    else:
        pairs = draw(st.lists(st.tuples(number_operands, number_operands), min_size=1, max_size=3))
        values = tuple((min(p), max(p)) for p in pairs)
        value = draw(numbers | st.sampled_from(values).map(lambda p: int_or_float(p[0])))
    key = "data.value"
    return AdvancedFilter(negative, key, values), AdvancedFilter(positive, key, values), value


def int_or_float(number: Decimal) -> int | float:
    return int(number) if number == number.to_integral_value() else float(number)


@settings(max_examples=200, deadline=None)
@given(case=twin_cases(), schema=st.sampled_from(SCHEMAS))
@example(
    case=(af(Op.STRING_NOT_IN, "data.value", "a"), af(Op.STRING_IN, "data.value", "a"), "A"),
    schema="eventgrid",
)
@example(
    case=(
        af(Op.NUMBER_NOT_IN, "data.value", D("0.3")),
        af(Op.NUMBER_IN, "data.value", D("0.3")),
        0.3,
    ),
    schema="cloudevents",
)
def test_not_operator_negates_its_twin_on_present_values(case, schema):
    """For a present, right-typed scalar, each Not operator is exactly its twin negated."""
    negative, positive, value = case
    event = make(schema, {"value": value})
    assert negative.matches(event) is not positive.matches(event)
    assert Filter(advanced_filters=(negative,)).matches(event) is not positive.matches(event)
    assert negative.explain(event).passed is not positive.explain(event).passed


@settings(max_examples=200, deadline=None)
@given(case=twin_cases(), schema=st.sampled_from(SCHEMAS), data=json_values, arrays=st.booleans())
def test_missing_key_breaks_the_twin_rule_only_for_affix_operators(case, schema, data, arrays):
    """On a missing key, String{Contains,BeginsWith,EndsWith} and their Nots both fail; the
    In/NotIn and range pairs stay negations (the Not one matches)."""
    negative, positive, _ = case
    negative = AdvancedFilter(negative.operator, "data.value.absent", negative.values)
    positive = AdvancedFilter(positive.operator, "data.value.absent", positive.values)
    event = make(schema, {"value": data})  # `data` never has a key "absent"
    assert resolve_key(event, "data.value.absent") is MISSING
    assert positive.matches(event, arrays=arrays) is False
    if negative.operator.value in ("StringNotContains", "StringNotBeginsWith", "StringNotEndsWith"):
        assert negative.matches(event, arrays=arrays) is False
    else:
        assert negative.matches(event, arrays=arrays) is True
