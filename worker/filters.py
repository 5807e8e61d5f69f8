"""Event Grid event-subscription filters, evaluated exactly as Event Grid evaluates them.

A rule's filter is pasted from an ARM template or `az eventgrid event-subscription show`, so it
must mean here what it means on a subscription (DESIGN §3, eventgrid-facts §c): includedEventTypes
AND subjectBeginsWith AND subjectEndsWith AND every advanced filter; OR across one filter's
values; `Not` operators fail if any value matches; string comparisons are case-insensitive; a
missing key and a wrong-typed value have documented (or decided) outcomes per operator.

Pure code: values in, booleans (or explanations) out. `Filter.matches` runs for every rule on
every event, so everything that depends only on the filter is computed once, at construction.
"""

from __future__ import annotations

import json
import operator as _op
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from operator import attrgetter
from typing import Any

from worker.events import MISSING, Event, Schema, lookup_data, lookup_key

__all__ = [
    "MULTI_VALUE_OPERATORS",
    "NOT_OPERATORS",
    "NO_VALUE_OPERATORS",
    "NUMBER_OPERATORS",
    "RANGE_OPERATORS",
    "SINGLE_VALUE_OPERATORS",
    "STRING_OPERATORS",
    "AdvancedFilter",
    "ClauseResult",
    "Filter",
    "Operator",
    "is_data_key",
    "is_envelope_key",
    "is_extension_key",
    "resolve_key",
]


class Operator(StrEnum):
    """Event Grid's `operatorType` strings, spelled as ARM spells them."""

    NUMBER_IN = "NumberIn"
    NUMBER_NOT_IN = "NumberNotIn"
    NUMBER_LESS_THAN = "NumberLessThan"
    NUMBER_GREATER_THAN = "NumberGreaterThan"
    NUMBER_LESS_THAN_OR_EQUALS = "NumberLessThanOrEquals"
    NUMBER_GREATER_THAN_OR_EQUALS = "NumberGreaterThanOrEquals"
    NUMBER_IN_RANGE = "NumberInRange"
    NUMBER_NOT_IN_RANGE = "NumberNotInRange"
    BOOL_EQUALS = "BoolEquals"
    STRING_CONTAINS = "StringContains"
    STRING_NOT_CONTAINS = "StringNotContains"
    STRING_BEGINS_WITH = "StringBeginsWith"
    STRING_NOT_BEGINS_WITH = "StringNotBeginsWith"
    STRING_ENDS_WITH = "StringEndsWith"
    STRING_NOT_ENDS_WITH = "StringNotEndsWith"
    STRING_IN = "StringIn"
    STRING_NOT_IN = "StringNotIn"
    IS_NULL_OR_UNDEFINED = "IsNullOrUndefined"
    IS_NOT_NULL = "IsNotNull"


_O = Operator

SINGLE_VALUE_OPERATORS: frozenset[Operator] = frozenset(
    {
        _O.NUMBER_LESS_THAN,
        _O.NUMBER_GREATER_THAN,
        _O.NUMBER_LESS_THAN_OR_EQUALS,
        _O.NUMBER_GREATER_THAN_OR_EQUALS,
        _O.BOOL_EQUALS,
    }
)
RANGE_OPERATORS: frozenset[Operator] = frozenset({_O.NUMBER_IN_RANGE, _O.NUMBER_NOT_IN_RANGE})
NO_VALUE_OPERATORS: frozenset[Operator] = frozenset({_O.IS_NULL_OR_UNDEFINED, _O.IS_NOT_NULL})
MULTI_VALUE_OPERATORS: frozenset[Operator] = (
    frozenset(Operator) - SINGLE_VALUE_OPERATORS - RANGE_OPERATORS - NO_VALUE_OPERATORS
)
NUMBER_OPERATORS: frozenset[Operator] = frozenset(o for o in Operator if o.startswith("Number"))
STRING_OPERATORS: frozenset[Operator] = frozenset(o for o in Operator if o.startswith("String"))
NOT_OPERATORS: frozenset[Operator] = frozenset(
    {
        _O.NUMBER_NOT_IN,
        _O.NUMBER_NOT_IN_RANGE,
        _O.STRING_NOT_CONTAINS,
        _O.STRING_NOT_BEGINS_WITH,
        _O.STRING_NOT_ENDS_WITH,
        _O.STRING_NOT_IN,
    }
)

# A Not operator is its positive twin, negated — except on a missing key (see _MISSING_MATCHES).
_TWIN: dict[Operator, Operator] = {
    _O.NUMBER_NOT_IN: _O.NUMBER_IN,
    _O.NUMBER_NOT_IN_RANGE: _O.NUMBER_IN_RANGE,
    _O.STRING_NOT_CONTAINS: _O.STRING_CONTAINS,
    _O.STRING_NOT_BEGINS_WITH: _O.STRING_BEGINS_WITH,
    _O.STRING_NOT_ENDS_WITH: _O.STRING_ENDS_WITH,
    _O.STRING_NOT_IN: _O.STRING_IN,
}

# Verbatim from the docs, plus NumberNotInRange (like NumberNotIn) and IsNullOrUndefined; every
# other operator is "not matched" on a missing key — including StringNotContains & co.
_MISSING_MATCHES: frozenset[Operator] = frozenset(
    {_O.NUMBER_NOT_IN, _O.STRING_NOT_IN, _O.NUMBER_NOT_IN_RANGE, _O.IS_NULL_OR_UNDEFINED}
)

# How each positive operator relates a value to its operands (Not operators use their twin's).
_FAMILY: dict[Operator, str] = {
    _O.NUMBER_IN: "in",
    _O.NUMBER_LESS_THAN: "lt",
    _O.NUMBER_GREATER_THAN: "gt",
    _O.NUMBER_LESS_THAN_OR_EQUALS: "le",
    _O.NUMBER_GREATER_THAN_OR_EQUALS: "ge",
    _O.NUMBER_IN_RANGE: "range",
    _O.BOOL_EQUALS: "bool",
    _O.STRING_IN: "in",
    _O.STRING_CONTAINS: "contains",
    _O.STRING_BEGINS_WITH: "begins",
    _O.STRING_ENDS_WITH: "ends",
}
_COMPARE_WORDS = {
    "lt": "less than",
    "gt": "greater than",
    "le": "less than or equal to",
    "ge": "greater than or equal to",
}
_COMPARE = {"in": _op.eq, "lt": _op.lt, "gt": _op.gt, "le": _op.le, "ge": _op.ge}
_STRING_VERBS = {"contains": "contains", "begins": "begins with", "ends": "ends with"}

_WRONG_TYPE = -2
_NO_HIT = -1


@dataclass(frozen=True, slots=True)
class ClauseResult:
    """Why one filter clause passed or failed for one event (for `explain`)."""

    clause: str
    looked_at: Any  # the value the clause looked at; MISSING when the key is absent
    passed: bool
    reason: str


# --- keys -----------------------------------------------------------------------------------


def _specversion(event: Event) -> Any:
    if event.schema is Schema.CLOUDEVENTS:
        return event.raw.get("specversion", MISSING)
    return MISSING


# Envelope names address the normalised event, so either schema's names work on both.
_ENVELOPE: dict[str, Callable[[Event], Any]] = {
    "id": attrgetter("id"),
    "topic": attrgetter("topic"),
    "source": attrgetter("topic"),
    "subject": attrgetter("subject"),
    "eventtype": attrgetter("type"),
    "type": attrgetter("type"),
    "dataversion": attrgetter("data_version"),
    "specversion": _specversion,
}


def is_envelope_key(key: str) -> bool:
    """`id`, `topic`/`source`, `subject`, `eventType`/`type`, `dataVersion`, `specversion`."""
    return key.casefold() in _ENVELOPE


def is_data_key(key: str) -> bool:
    """`data` itself or `data.…`; the prefix is case-insensitive, as the docs write `Data.Key1`."""
    return key[:4].casefold() == "data" and (len(key) == 4 or key[4] == ".")


def is_extension_key(key: str) -> bool:
    """Neither envelope nor data: read as a CloudEvents extension attribute."""
    return not is_envelope_key(key) and not is_data_key(key)


@lru_cache(maxsize=1024)
def _getter(key: str) -> Callable[[Event], Any]:
    """A function reading the value `key` addresses: built once per distinct key."""
    envelope = _ENVELOPE.get(key.casefold())
    if envelope is not None:
        return envelope
    if not is_data_key(key):

        def extension(event: Event) -> Any:
            return lookup_key(event.extensions, key)

        return extension
    if len(key) == 4:
        return attrgetter("data")
    segments = key[5:].split(".")
    if len(segments) == 1:
        segment = segments[0]

        def data_key(event: Event) -> Any:
            data = event.data
            if type(data) is dict:
                value = data.get(segment, MISSING)
                return value if value is not MISSING else lookup_key(data, segment)
            return lookup_data(data, segments)

        return data_key

    def data_path(event: Event) -> Any:
        # lookup_data's semantics, with the common case (an exact key in a dict) inlined
        value = event.data
        for segment in segments:
            if type(value) is dict:
                found = value.get(segment, MISSING)
                if found is MISSING:
                    found = lookup_key(value, segment)
            else:
                found = lookup_data(value, [segment])
            if found is MISSING:
                return MISSING
            value = found
        return value

    return data_path


def resolve_key(event: Event, key: str) -> Any:
    """The value a filter key addresses in `event`, or MISSING."""
    return _getter(key)(event)


# --- values -----------------------------------------------------------------------------------


def _number(value: Any) -> int | Decimal | None:
    """A JSON number as an exact decimal (ints stay ints: they compare with Decimal exactly).

    Booleans are not numbers here although Python's bool is an int; NaN compares with nothing.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if value == value else None
    return None


def _number_predicate(family: str, values: tuple[Any, ...]) -> Callable[[Any], bool]:
    """value → does it satisfy the number operator (False for a wrong-typed value)?

    A float is compared as Decimal(repr(f)), which costs ~0.3 µs, so it is first compared with
    the operand's nearest float: repr(f) rounds to f and the operand rounds to float(operand),
    so when those floats differ the decimals compare the same way, and only a tie needs the
    exact comparison.
    """
    if family == "in":
        exact = frozenset(values)
        near = frozenset(float(v) for v in values)

        def number_in(value: Any) -> bool:
            kind = type(value)
            if kind is int:
                return value in exact
            if kind is float:
                return value in near and Decimal(repr(value)) in exact
            number = _number(value)
            return number is not None and number in exact

        return number_in
    if family == "range":
        ranges = values
        near_ranges = tuple((low, high, float(low), float(high)) for low, high in values)

        def in_ranges(value: Any) -> bool:
            kind = type(value)
            if kind is float:
                for low, high, near_low, near_high in near_ranges:
                    if near_low < value < near_high:
                        return True
                    if near_low <= value <= near_high:  # a tie with a bound: decide exactly
                        exact = Decimal(repr(value))
                        if low <= exact <= high:
                            return True
                return False  # NaN fails every comparison
            number = value if kind is int else _number(value)
            return number is not None and any(low <= number <= high for low, high in ranges)

        return in_ranges
    compare = _COMPARE[family]
    bound = values[0]
    near_bound = float(bound)

    def compare_number(value: Any) -> bool:
        kind = type(value)
        if kind is float:
            if value != near_bound:  # NaN included: every comparison with it is False
                return compare(value, near_bound)
            return compare(Decimal(repr(value)), bound)
        if kind is int:
            return compare(value, bound)
        number = _number(value)
        return number is not None and compare(number, bound)

    return compare_number


def _to_decimal(value: Any, op: Operator) -> Decimal:
    if isinstance(value, Decimal) and not value.is_nan():
        return value
    number = _number(value)
    if number is None:
        raise ValueError(f"{op} takes numbers, got {value!r}")
    return Decimal(number)


def _operands(op: Operator, values: Any) -> tuple[Any, ...]:
    """Check and normalise operands; the rules loader reports located errors before this."""
    values = tuple(values)
    if op in NO_VALUE_OPERATORS:
        if values:
            raise ValueError(f"{op} takes no values")
        return values
    if not values:
        raise ValueError(f"{op} needs at least one value")
    if op in SINGLE_VALUE_OPERATORS and len(values) != 1:
        raise ValueError(f"{op} takes exactly one value, got {len(values)}")
    if op in RANGE_OPERATORS:
        ranges = []
        for pair in values:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"{op} takes [low, high] pairs, got {pair!r}")
            low, high = _to_decimal(pair[0], op), _to_decimal(pair[1], op)
            if low > high:
                raise ValueError(f"{op} range [{low}, {high}] has low > high")
            ranges.append((low, high))
        return tuple(ranges)
    if op in NUMBER_OPERATORS:
        return tuple(_to_decimal(v, op) for v in values)
    if op is Operator.BOOL_EQUALS:
        if not isinstance(values[0], bool):
            raise ValueError(f"BoolEquals takes a boolean, got {values[0]!r}")
        return values
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{op} takes strings, got {v!r}")
    return values


def _predicate(op: Operator, values: tuple[Any, ...], folded: tuple[str, ...]) -> Callable:
    """value → does it match the positive form of `op` (False for a wrong-typed value)."""
    family = _FAMILY[_TWIN.get(op, op)]
    if op in NUMBER_OPERATORS:
        return _number_predicate(family, values)
    if op is Operator.BOOL_EQUALS:
        wanted = values[0]

        def bool_equals(value: Any) -> bool:
            return value is wanted

        return bool_equals
    if family == "in":
        members = frozenset(folded)

        def string_in(value: Any) -> bool:
            return isinstance(value, str) and value.casefold() in members

        return string_in
    if family == "contains":

        def contains(value: Any) -> bool:
            if not isinstance(value, str):
                return False
            text = value.casefold()
            return any(part in text for part in folded)

        return contains
    method = str.startswith if family == "begins" else str.endswith

    def affix(value: Any) -> bool:
        return isinstance(value, str) and method(value.casefold(), folded)

    return affix


def _is_null(value: Any) -> bool:
    return value is None


def _compile(
    get: Callable[[Event], Any],
    pred: Callable[[Any], bool],
    on_missing: bool,
    negate: bool,
    elementwise: bool,
) -> Callable[[Event], bool]:
    """One closure per filter and arrays flag, so the hot path makes no decisions twice."""
    if not elementwise:

        def check(event: Event) -> bool:
            value = get(event)
            if value is MISSING:
                return on_missing
            return pred(value) is not negate

        return check

    def check_arrays(event: Event) -> bool:
        value = get(event)
        if value is MISSING:
            return on_missing
        if isinstance(value, list):
            for element in value:
                if pred(element):
                    return not negate
            return negate
        return pred(value) is not negate

    return check_arrays


def _scalar_check(
    op: Operator,
    values: tuple[Any, ...],
    folded: tuple[str, ...],
    get: Callable[[Event], Any],
    on_missing: bool,
    negate: bool,
) -> Callable[[Event], bool] | None:
    """The arrays-off check with its predicate inlined: the hot path of `Filter.matches`.

    Same decision as `_compile(get, _predicate(...), ...)` (the tests hold them equal), minus a
    function call per clause, which is a third of a clause's cost. None: use the generic one.
    """
    family = _FAMILY.get(_TWIN.get(op, op))
    if op in STRING_OPERATORS:
        if family == "in":
            members = frozenset(folded)

            def string_in(event: Event) -> bool:
                value = get(event)
                if value is MISSING:
                    return on_missing
                return (isinstance(value, str) and value.casefold() in members) is not negate

            return string_in
        if family == "contains":

            def string_contains(event: Event) -> bool:
                value = get(event)
                if value is MISSING:
                    return on_missing
                if not isinstance(value, str):
                    return negate
                text = value.casefold()
                for part in folded:
                    if part in text:
                        return not negate
                return negate

            return string_contains
        method = str.startswith if family == "begins" else str.endswith

        def string_affix(event: Event) -> bool:
            value = get(event)
            if value is MISSING:
                return on_missing
            return (isinstance(value, str) and method(value.casefold(), folded)) is not negate

        return string_affix
    if family in _COMPARE_WORDS:
        compare = _COMPARE[family]
        bound = values[0]
        near_bound = float(bound)

        def number_compare(event: Event) -> bool:
            value = get(event)
            if value is MISSING:
                return on_missing
            kind = type(value)
            if kind is float:
                if value != near_bound:  # see _number_predicate
                    return compare(value, near_bound)
                return compare(Decimal(repr(value)), bound)
            if kind is int:
                return compare(value, bound)
            number = _number(value)
            return number is not None and compare(number, bound)

        return number_compare
    if op is Operator.BOOL_EQUALS:
        wanted = values[0]

        def bool_equals(event: Event) -> bool:
            value = get(event)
            return value is not MISSING and value is wanted

        return bool_equals
    if op in NO_VALUE_OPERATORS:
        is_null_or_undefined = op is Operator.IS_NULL_OR_UNDEFINED

        def null_check(event: Event) -> bool:
            value = get(event)
            return (value is MISSING or value is None) is is_null_or_undefined

        return null_check
    return None


# --- rendering for explain ----------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    """A short, JSON-flavoured rendering of a value for a reason sentence."""
    if value is MISSING:
        return "<missing>"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, Decimal | int | float):
        text = str(value)
    elif isinstance(value, tuple):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- advanced filters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdvancedFilter:
    """One `{operatorType, key, value|values}` entry of `advancedFilters`.

    `values` holds the operands as the rules loader validated them: Decimal for number
    operators (a 1-tuple for single-value ones), (Decimal, Decimal) pairs for ranges, str for
    string operators, a bool for BoolEquals, nothing for the null checks.
    """

    operator: Operator
    key: str
    values: tuple[Any, ...] = ()
    _get: Callable[[Event], Any] = field(init=False, repr=False, compare=False, default=None)
    _pred: Callable[[Any], bool] = field(init=False, repr=False, compare=False, default=None)
    _folded: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())
    _checks: tuple[Callable[[Event], bool], Callable[[Event], bool]] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        op = Operator(self.operator)
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"{op} needs a non-empty key, got {self.key!r}")
        values = _operands(op, self.values)
        folded = tuple(v.casefold() for v in values) if op in STRING_OPERATORS else ()
        get = _getter(self.key)
        if op in NO_VALUE_OPERATORS:
            pred, elementwise = _is_null, False
        else:
            pred, elementwise = _predicate(op, values, folded), True
        negate = op in NOT_OPERATORS or op is Operator.IS_NOT_NULL
        on_missing = op in _MISSING_MATCHES
        setter = object.__setattr__
        setter(self, "operator", op)
        setter(self, "values", values)
        setter(self, "_get", get)
        setter(self, "_pred", pred)
        setter(self, "_folded", folded)
        setter(
            self,
            "_checks",
            (
                _scalar_check(op, values, folded, get, on_missing, negate)
                or _compile(get, pred, on_missing, negate, False),
                _compile(get, pred, on_missing, negate, elementwise),
            ),
        )

    def matches(self, event: Event, *, arrays: bool = False) -> bool:
        """Does `event` pass this filter? `arrays` is enableAdvancedFilteringOnArrays."""
        return self._checks[1 if arrays else 0](event)

    def explain(self, event: Event, *, arrays: bool = False) -> ClauseResult:
        """The same decision as `matches`, reached step by step and put into words."""
        op = self.operator
        clause = f"{op} {self.key}"
        value = self._get(event)
        if value is MISSING:
            passed = op in _MISSING_MATCHES
            return ClauseResult(
                clause, MISSING, passed, f"key is missing: {op} {_verdict(passed)} a missing key"
            )
        if op is Operator.IS_NULL_OR_UNDEFINED:
            passed = value is None
            reason = "value is null" if passed else f"value {_show(value)} is present, not null"
            return ClauseResult(clause, value, passed, reason)
        if op is Operator.IS_NOT_NULL:
            passed = value is not None
            reason = f"value {_show(value)} is present, not null" if passed else "value is null"
            return ClauseResult(clause, value, passed, reason)
        negate = op in NOT_OPERATORS
        if arrays and isinstance(value, list):
            for index, element in enumerate(value):
                hit = self._first_hit(element)
                if hit >= 0:
                    passed = not negate
                    reason = f"element {index} ({_show(element)}) {self._phrase(hit)}"
                    return ClauseResult(clause, value, passed, self._conclude(reason, passed))
            passed = negate
            if not value:
                reason = "the array is empty"
            else:
                reason = f"no element of {_show(value)} {self._phrase(_NO_HIT, any_of=True)}"
            return ClauseResult(clause, value, passed, self._conclude(reason, passed))
        hit = self._first_hit(value)
        if hit == _WRONG_TYPE:
            passed = negate
            if isinstance(value, list):
                what = "value is an array and enableAdvancedFilteringOnArrays is off"
            else:
                what = f"value {_show(value)} is {_json_type(value)}, not {self._expected()}"
            reason = f"{what}: {op} ignores it and {_verdict(passed)}"
            return ClauseResult(clause, value, passed, reason)
        passed = (hit >= 0) is not negate
        reason = f"{_show(value)} {self._phrase(hit)}"
        return ClauseResult(clause, value, passed, self._conclude(reason, passed))

    # explain's own, deliberately separate evaluation (tests check it agrees with matches)

    def _first_hit(self, value: Any) -> int:
        """Index of the first operand `value` matches, _NO_HIT, or _WRONG_TYPE."""
        op = self.operator
        family = _FAMILY[_TWIN.get(op, op)]
        if op in NUMBER_OPERATORS:
            number = _number(value)
            if number is None:
                return _WRONG_TYPE
            for index, operand in enumerate(self.values):
                if family == "range":
                    hit = operand[0] <= number <= operand[1]
                else:
                    hit = _COMPARE[family](number, operand)
                if hit:
                    return index
            return _NO_HIT
        if op is Operator.BOOL_EQUALS:
            if not isinstance(value, bool):
                return _WRONG_TYPE
            return 0 if value == self.values[0] else _NO_HIT
        if not isinstance(value, str):
            return _WRONG_TYPE
        text = value.casefold()
        for index, operand in enumerate(self._folded):
            if (
                (family == "in" and text == operand)
                or (family == "contains" and operand in text)
                or (family == "begins" and text.startswith(operand))
                or (family == "ends" and text.endswith(operand))
            ):
                return index
        return _NO_HIT

    def _phrase(self, hit: int, *, any_of: bool = False) -> str:
        """How a value relates to the operands: operand `hit` matched, or none did."""
        op = self.operator
        family = _FAMILY[_TWIN.get(op, op)]
        operands = _show(self.values, limit=200)
        if family == "in":
            text = f"is one of {operands}" if hit >= 0 or any_of else f"is not one of {operands}"
        elif family in _COMPARE_WORDS:
            words = _COMPARE_WORDS[family]
            bound = _show(self.values[0])
            text = f"is {words} {bound}" if hit >= 0 or any_of else f"is not {words} {bound}"
        elif family == "range":
            if hit >= 0:
                text = f"is in the range {_show(self.values[hit])}"
            else:
                text = f"is in {'any' if any_of else 'none'} of the ranges {operands}"
        elif family == "bool":
            bound = _show(self.values[0])
            text = f"is {bound}" if hit >= 0 or any_of else f"is not {bound}"
        else:
            verb = _STRING_VERBS[family]
            if hit >= 0:
                text = f"{verb} {_show(self.values[hit])}"
            else:
                text = f"{verb} {'any' if any_of else 'none'} of {operands}"
        if op in STRING_OPERATORS:
            text += " (case-insensitive)"
        return text

    def _conclude(self, reason: str, passed: bool) -> str:
        if self.operator in NOT_OPERATORS:
            return f"{reason}, so {self.operator} {_verdict(passed)}"
        return reason

    def _expected(self) -> str:
        if self.operator in NUMBER_OPERATORS:
            return "a number"
        if self.operator is Operator.BOOL_EQUALS:
            return "a boolean"
        return "a string"


def _verdict(passed: bool) -> str:
    return "matches" if passed else "does not match"


# --- whole filters ----------------------------------------------------------------------------

_TYPE_CACHE_MAX = 1024


@dataclass(frozen=True, slots=True)
class Filter:
    """A rule's filter: Event Grid's `EventSubscriptionFilter`, field for field."""

    included_event_types: tuple[str, ...] | None = None  # None or ("All",): every type
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    is_subject_case_sensitive: bool = False
    enable_advanced_filtering_on_arrays: bool = False
    advanced_filters: tuple[AdvancedFilter, ...] = ()
    _types: frozenset[str] | None = field(init=False, repr=False, compare=False, default=None)
    # event type → verdict: a dict hit on the type's cached hash is cheaper than casefolding
    # and hashing a 50-character type again for every rule and event (bounded: _TYPE_CACHE_MAX)
    _type_cache: dict[str, bool] = field(init=False, repr=False, compare=False, default=None)
    _begins: str = field(init=False, repr=False, compare=False, default="")
    _ends: str = field(init=False, repr=False, compare=False, default="")
    _checks: tuple[Callable[[Event], bool], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        setter = object.__setattr__
        types = self.included_event_types
        if types is not None:
            types = tuple(types)
            setter(self, "included_event_types", types)
            folded = frozenset(t.casefold() for t in types)
            setter(self, "_types", None if "all" in folded else folded)
        filters = tuple(self.advanced_filters)
        setter(self, "advanced_filters", filters)
        setter(self, "_type_cache", {})
        fold = (lambda s: s) if self.is_subject_case_sensitive else str.casefold
        setter(self, "_begins", fold(self.subject_begins_with))
        setter(self, "_ends", fold(self.subject_ends_with))
        arrays = bool(self.enable_advanced_filtering_on_arrays)
        setter(self, "_checks", tuple(f._checks[arrays] for f in filters))

    def matches_type(self, event_type: str) -> bool:
        """The includedEventTypes clause alone (case-insensitive; `All` = every type)."""
        types = self._types
        if types is None:
            return True
        known = self._type_cache.get(event_type)
        if known is None:
            known = event_type.casefold() in types
            if len(self._type_cache) < _TYPE_CACHE_MAX:
                self._type_cache[event_type] = known
        return known

    def matches(self, event: Event) -> bool:
        """Does `event` pass every clause? Cheapest clauses first; stops at the first failure."""
        if self._types is not None:
            known = self._type_cache.get(event.type)
            if known is None:
                known = self.matches_type(event.type)
            if not known:
                return False
        if self._begins or self._ends:
            subject = event.subject
            if not self.is_subject_case_sensitive:
                subject = subject.casefold()
            if not (subject.startswith(self._begins) and subject.endswith(self._ends)):
                return False
        for check in self._checks:  # noqa: SIM110 - a plain loop is faster than all(genexpr)
            if not check(event):
                return False
        return True

    def explain(self, event: Event) -> list[ClauseResult]:
        """One result per clause that is set, in order: types, begins, ends, advanced filters."""
        results: list[ClauseResult] = []
        if self.included_event_types is not None:
            listed = _show(self.included_event_types, limit=200)
            if self._types is None:
                passed, reason = True, "'All' is listed, so every type matches"
            else:
                passed = event.type.casefold() in self._types
                relation = "is one of" if passed else "is not one of"
                reason = f"{_show(event.type)} {relation} {listed} (case-insensitive)"
            results.append(ClauseResult("includedEventTypes", event.type, passed, reason))
        sensitivity = "case-sensitive" if self.is_subject_case_sensitive else "case-insensitive"
        subject = event.subject
        compared = subject if self.is_subject_case_sensitive else subject.casefold()
        if self.subject_begins_with:
            passed = compared.startswith(self._begins)
            relation = "begins with" if passed else "does not begin with"
            reason = f"subject {_show(subject)} {relation} {_show(self.subject_begins_with)}"
            results.append(
                ClauseResult("subjectBeginsWith", subject, passed, f"{reason} ({sensitivity})")
            )
        if self.subject_ends_with:
            passed = compared.endswith(self._ends)
            relation = "ends with" if passed else "does not end with"
            reason = f"subject {_show(subject)} {relation} {_show(self.subject_ends_with)}"
            results.append(
                ClauseResult("subjectEndsWith", subject, passed, f"{reason} ({sensitivity})")
            )
        arrays = bool(self.enable_advanced_filtering_on_arrays)
        for index, advanced in enumerate(self.advanced_filters):
            result = advanced.explain(event, arrays=arrays)
            results.append(replace(result, clause=f"advancedFilters[{index}] {result.clause}"))
        return results
