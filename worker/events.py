"""Event Hubs message bodies → normalised Azure ML events.

Event Grid may deliver either of its two schemas, one object or an array of them, and the
same stream can mix them, so the schema is decided per event (DESIGN §2). Nothing here raises
for bad input: a body or array element that is not an event becomes a `Rejection` carrying a
plain reason, so one poison message never stops a partition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from worker.errors import exception_summary
from worker.jsontext import dumps_bytes, nested_deeper_than

__all__ = [
    "MISSING",
    "Event",
    "Origin",
    "Rejection",
    "Schema",
    "decode_body",
    "fold_topic",
    "fold_type",
    "lookup_data",
    "parse_time",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()


class Schema(StrEnum):
    EVENTGRID = "eventgrid"
    CLOUDEVENTS = "cloudevents"


class _Missing:
    """Sentinel for a key that is absent, as opposed to present with JSON `null`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from: Event Hubs coordinates, or a line of a file."""

    partition_id: str = ""
    offset: str | None = None
    sequence_number: int | None = None
    enqueued_time: datetime | None = None
    delivery_count: int | None = None  # `aeg-delivery-count` application property
    line: int | None = None  # file replay: 1-based line number

    def describe(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.partition_id:
            parts.append(f"partition {self.partition_id}")
        if self.sequence_number is not None:
            parts.append(f"sequence number {self.sequence_number}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        return ", ".join(parts) or "unknown position"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Origin:
        """The inverse of `as_dict` (saved state, dead letters)."""
        enqueued = raw.get("enqueued_time")
        return cls(
            partition_id=raw.get("partition_id") or "",
            offset=raw.get("offset"),
            sequence_number=raw.get("sequence_number"),
            enqueued_time=parse_time(enqueued)[0] if enqueued else None,
            line=raw.get("line"),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition_id": self.partition_id,
            "offset": self.offset,
            "sequence_number": self.sequence_number,
            "enqueued_time": _iso(self.enqueued_time) if self.enqueued_time else None,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One normalised event, whichever schema it arrived in.

    `time_ticks` keeps the event time in 100 ns units since the epoch: `datetime` stops at
    microseconds, and Event Grid stamps seven fractional digits, which ordering must not lose.
    """

    id: str
    topic: str
    subject: str
    type: str
    time: datetime
    time_ticks: int
    data: Any
    data_version: str
    schema: Schema
    extensions: Mapping[str, Any] = field(default_factory=dict)
    origin: Origin = field(default_factory=Origin)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    late: bool = False

    @property
    def topic_key(self) -> str:
        """Topics are ARM ids, which Azure re-cases at will: compare them case-folded."""
        return fold_topic(self.topic)

    @property
    def object_key(self) -> tuple[str, str]:
        return (fold_topic(self.topic), self.subject)

    @property
    def partition_id(self) -> str:
        return self.origin.partition_id

    @property
    def offset(self) -> str | None:
        return self.origin.offset

    @property
    def sequence_number(self) -> int | None:
        return self.origin.sequence_number

    @property
    def enqueued_time(self) -> datetime | None:
        return self.origin.enqueued_time

    @property
    def delivery_count(self) -> int | None:
        return self.origin.delivery_count

    def as_received(self) -> dict[str, Any]:
        """The event object exactly as it arrived (for webhooks, forwarding, dead-letters)."""
        return dict(self.raw)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A body or array element that is not a usable event; `index` is its place in an array."""

    reason: str
    origin: Origin = field(default_factory=Origin)
    index: int | None = None
    body: bytes = field(default=b"", repr=False)

    def describe(self) -> str:
        where = self.origin.describe()
        if self.index is not None:
            where += f", array element {self.index}"
        return f"{where}: {self.reason}"


_FOLDED_TOPICS: dict[str, str] = {}


def fold_topic(topic: str) -> str:
    """`topic.casefold()`, memoised: a partition carries a handful of topics, and every id the
    dedupe memory holds then shares one folded string instead of a copy of its own."""
    folded = _FOLDED_TOPICS.get(topic)
    if folded is None:
        folded = topic.casefold()
        if len(topic) > 256:  # not a real one: no memory for it (DESIGN §7)
            return folded
        if len(_FOLDED_TOPICS) >= 4096:
            _FOLDED_TOPICS.clear()
        _FOLDED_TOPICS[topic] = folded
    return folded


_FOLDED_TYPES: dict[str, str] = {}


def fold_type(event_type: str) -> str:
    """`event_type.casefold()`, memoised: a stream has a handful of event types."""
    folded = _FOLDED_TYPES.get(event_type)
    if folded is None:
        folded = event_type.casefold()
        if len(event_type) > 256:  # not a real one: no memory for it (DESIGN §7)
            return folded
        if len(_FOLDED_TYPES) >= 4096:
            _FOLDED_TYPES.clear()
        _FOLDED_TYPES[event_type] = folded
    return folded


# --- time -------------------------------------------------------------------------------

_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):?(?P<om>\d{2}))?\Z"
)


# The form Event Grid writes (RFC 3339 in UTC); anything else takes the general path below.
_UTC_TIME_RE = re.compile(
    r"(\d{4}-\d\d-\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:Z|\+00:00)\Z", re.ASCII
)
_day_seconds: dict[str, int] = {}  # "YYYY-MM-DD" → its midnight in seconds since the epoch


_seconds_of: dict[str, tuple[int, datetime]] = {}  # "YYYY-MM-DDTHH:MM:SS" → (ticks, time)
_ASCII_DIGITS = frozenset("0123456789")


def _parse_utc(text: str) -> tuple[datetime, int] | None:
    """`YYYY-MM-DDTHH:MM:SS[.f…]Z` (or `+00:00`), or None: the general parser then decides
    and words the error. Same result as the general path, at a fraction of its cost: the
    events of one second share their (validated) first 19 characters, looked up here."""
    known = _seconds_of.get(text[:19])
    if known is not None:
        rest = text[19:]
        if rest == "Z" or rest == "+00:00":
            return known[1], known[0]
        if rest[:1] == ".":
            digits = rest[1:-1] if rest[-1:] == "Z" else rest[1:-6] if rest[-6:] == "+00:00" else ""
            if digits and _ASCII_DIGITS.issuperset(digits):
                fraction = int(digits[:7].ljust(7, "0"))
                return known[1].replace(microsecond=fraction // 10), known[0] + fraction
        return None
    match = _UTC_TIME_RE.match(text)
    if match is None:
        return None
    day, hour, minute, second, _ = match.groups()
    midnight = _day_seconds.get(day)
    if midnight is None:
        try:
            ordinal = datetime(int(day[:4]), int(day[5:7]), int(day[8:])).toordinal()
        except ValueError:
            return None
        if len(_day_seconds) >= 4096:
            _day_seconds.clear()
        midnight = _day_seconds[day] = (ordinal - _EPOCH_ORDINAL) * 86_400
    h, m, sec = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or sec > 59:
        return None
    ticks = (midnight + h * 3600 + m * 60 + sec) * 10_000_000
    if len(_seconds_of) >= 4096:
        _seconds_of.clear()
    _seconds_of[text[:19]] = (ticks, _EPOCH + timedelta(microseconds=ticks // 10))
    return _parse_utc(text)


def parse_time(text: str) -> tuple[datetime, int]:
    """Parse an ISO 8601 / RFC 3339 time into (aware UTC datetime, 100 ns ticks).

    Up to seven fractional digits are kept exactly (more are truncated); any offset is
    accepted and a missing one is read as UTC. Raises ValueError with a plain message.
    """
    if type(text) is str:
        fast = _parse_utc(text)
        if fast is not None:
            return fast
    match = _TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an ISO 8601 time: {_quoted(text)}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "")[:7].ljust(7, "0")
    try:
        naive = datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        raise ValueError(f"not a valid time: {_quoted(text)} ({exc})") from None
    offset = timedelta()
    if match.group("sign"):
        if int(match.group("oh")) > 23 or int(match.group("om")) > 59:
            raise ValueError(f"not a valid time: {_quoted(text)} (offset out of range)")
        offset = timedelta(hours=int(match.group("oh")), minutes=int(match.group("om")))
        if match.group("sign") == "-":
            offset = -offset
    try:
        utc = naive.replace(tzinfo=UTC) - offset
        seconds = (utc - _EPOCH) // timedelta(seconds=1) + (1 if second == 60 else 0)
        ticks = seconds * 10_000_000 + int(fraction)
        return _EPOCH + timedelta(microseconds=ticks // 10), ticks
    except OverflowError:
        # Year 1 east of UTC, year 9999 west of it, or its last leap second: in UTC these
        # fall outside what any clock (ours: datetime) can hold. DESIGN §7: invalid.
        raise ValueError(f"time out of range: {_quoted(text)}") from None


def _quoted(value: Any, limit: int = 100) -> str:
    """A value for a reason: its repr, cut (a publisher's "time" may be a megabyte)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}... (cut)"


def ticks_of(moment: datetime) -> int:
    """100 ns ticks of an aware datetime (enqueued times, "now")."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_day_text: dict[int, str] = {}  # days since the epoch → "YYYY-MM-DDT" (memo)


def iso_ticks(ticks: int) -> str:
    """Render ticks as RFC 3339 UTC with seven fractional digits (Event Grid's own form)."""
    seconds, fraction = divmod(ticks, 10_000_000)
    day, second = divmod(seconds, 86_400)
    prefix = _day_text.get(day)
    if prefix is None:
        prefix = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        if len(_day_text) >= 4096:
            _day_text.clear()
        _day_text[day] = prefix
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{fraction:07d}Z"


# --- decoding -----------------------------------------------------------------------------

# msgspec decodes standard JSON to the same values as `json.loads` (big integers included)
# at 2-3x its speed; what it refuses — NaN, Infinity, lone surrogate escapes, numbers out of
# float range, bad UTF-8, malformed JSON — falls back to `json.loads`, which keeps the
# standard library's answer and its error messages, made as strict as RFC 8259 (DESIGN §7):
# no NaN/Infinity, no number that overflows a float, no integer past Python's digit limit.
_fast_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class _Unusable:
    """Stands in for a value the standard library would accept but RFC 8259 (or our
    arithmetic) does not; the element holding one is rejected, its siblings are not."""

    reason: str


_INF = float("inf")


def _constant(name: str) -> _Unusable:
    return _Unusable(f"'{name}' is not a JSON number (RFC 8259)")


def _float(text: str) -> float | _Unusable:
    value = float(text)
    if value in (_INF, -_INF):
        return _Unusable(f"number {text[:40]!r} is out of range")
    return value


def _int(text: str) -> int | _Unusable:
    # The interpreter's limit (`sys.get_int_max_str_digits()`, 4,300 digits), the one
    # msgspec applies on the fast path too: a number decodes, or not, whichever path its
    # body takes, and every integer that decodes can be written back as text.
    try:
        return int(text)
    except ValueError:
        return _Unusable(f"an integer of {len(text.lstrip('-'))} digits is out of range")


_strict_loads = json.JSONDecoder(
    parse_constant=_constant, parse_float=_float, parse_int=_int
).decode


def _unusable_in(value: Any) -> _Unusable | None:
    """The first stand-in inside a decoded value (iterative: any depth json accepted)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Unusable:
            return item
        if type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return None


_EG_REQUIRED = ("id", "subject", "eventType", "eventTime")
_CE_REQUIRED = ("id", "source", "specversion", "type")
_CE_KNOWN = frozenset(
    {"id", "source", "specversion", "type", "subject", "time", "data", "data_base64"}
)


def decode_body(
    body: bytes | str,
    origin: Origin = Origin(),
    *,
    default_time: tuple[datetime, int] | None = None,
) -> tuple[list[Event], list[Rejection]]:
    """Decode one Event Hubs message body into its events and its rejected parts.

    `default_time` is the time a CloudEvent without `time` takes: the message's enqueued
    time in `run`, the previous event's time in a file replay.
    """
    # A str body with a lone surrogate keeps its (WTF-8) bytes, rejected below as not UTF-8.
    raw_bytes = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    try:
        document = _fast_decode(raw_bytes)
    except Exception:  # not plain JSON for msgspec: the standard library decides and explains
        try:
            text = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"body is not UTF-8 ({exc.reason} at byte {exc.start})"
            return [], [Rejection(reason, origin, body=raw_bytes)]
        try:
            document = _strict_loads(text)
        except json.JSONDecodeError as exc:
            reason = f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            return [], [Rejection(reason, origin, body=raw_bytes)]
        except RecursionError:
            return [], [Rejection("body is not JSON (nested too deeply)", origin, body=raw_bytes)]
        except ValueError as exc:
            reason = f"body is not usable JSON ({_first_line(exc)})"
            return [], [Rejection(reason, origin, body=raw_bytes)]
        strict = True
    else:
        strict = False

    if default_time is None and origin.enqueued_time is not None:
        default_time = (origin.enqueued_time, ticks_of(origin.enqueued_time))

    events: list[Event] = []
    rejections: list[Rejection] = []
    if isinstance(document, list):
        if not document:
            return [], [Rejection("body is an empty JSON array", origin, body=raw_bytes)]
        elements: Iterator[tuple[int | None, Any]] = iter(enumerate(document))
    else:
        elements = iter([(None, document)])
    # Depth is checked only where it could be exceeded (a fast count of the brackets): a
    # value nested that deep can be decoded, but not saved and read back (state, dead
    # letters are read by recursive decoders), so it would poison the partition's state.
    deep = raw_bytes.count(b"[") + raw_bytes.count(b"{") > MAX_DEPTH
    for index, element in elements:
        unusable = _unusable_in(element) if strict else None
        if unusable is not None:
            result = f"not standard JSON: {unusable.reason}"
        elif deep and nested_deeper_than(element, MAX_DEPTH):
            result = f"nested deeper than {MAX_DEPTH} levels"
        else:
            try:
                result = _decode_one(element, origin, default_time)
            except Exception as exc:  # one element's failure is its own (DESIGN §7)
                result = f"not a usable event ({exception_summary(exc)})"
            if type(result) is Event:
                result = _within_limits(result)
        if isinstance(result, str):
            element_body = raw_bytes if index is None else _dump(element)
            rejections.append(Rejection(result, origin, index, element_body))
        else:
            events.append(result)
            default_time = (result.time, result.time_ticks)
    return events, rejections


# Bounds on what one event may make the worker remember (DESIGN §7): ids, topics, subjects
# and types are kept per object and per id for the dedupe window and saved with the state;
# Azure ML's are far shorter (ARM ids stay under 1 KiB).
MAX_FIELD_CHARS = 4096
MAX_DEPTH = 200


def _within_limits(event: Event) -> Event | str:
    for name, value in (
        ("id", event.id),
        ("topic", event.topic),
        ("subject", event.subject),
        ("type", event.type),
    ):
        if len(value) > MAX_FIELD_CHARS:
            return f"'{name}' is {len(value):,} characters long; the limit is {MAX_FIELD_CHARS:,}"
    return event


def _first_line(exc: BaseException) -> str:
    """The message part of `exception_summary` (the type name is said by the caller)."""
    return exception_summary(exc).partition(": ")[2]


def _dump(element: Any) -> bytes:
    try:
        return dumps_bytes(element)
    except (TypeError, ValueError, RecursionError):
        return b""


def _decode_one(
    element: Any, origin: Origin, default_time: tuple[datetime, int] | None
) -> Event | str:
    if not isinstance(element, dict):
        return f"not an event: expected a JSON object, got {_json_type(element)}"
    if "specversion" in element:
        return _decode_cloudevent(element, origin, default_time)
    if "eventType" in element:
        return _decode_eventgrid(element, origin)
    return "not an event: neither 'specversion' (CloudEvents) nor 'eventType' (Event Grid)"


def _decode_eventgrid(obj: dict[str, Any], origin: Origin) -> Event | str:
    # The usual event, in one pass; anything unusual takes the checking path below, which
    # decides the same way for a well-formed event and words what is wrong otherwise.
    event_id = obj.get("id")
    subject = obj.get("subject")
    event_type = obj.get("eventType")
    event_time = obj.get("eventTime")
    topic = obj.get("topic", "")
    data_version = obj.get("dataVersion", "")
    if (
        type(event_id) is str
        and type(subject) is str
        and type(event_type) is str
        and type(event_time) is str
        and type(topic) is str
        and type(data_version) is str
    ):
        parsed = _parse_utc(event_time)
        if parsed is not None:
            return Event(
                event_id,
                topic,
                subject,
                event_type,
                parsed[0],
                parsed[1],
                obj.get("data"),
                data_version,
                Schema.EVENTGRID,
                {},
                origin,
                obj,
            )
    return _check_eventgrid(obj, origin)


def _check_eventgrid(obj: dict[str, Any], origin: Origin) -> Event | str:
    missing = [name for name in _EG_REQUIRED if name not in obj]
    if missing:
        return f"Event Grid event lacks required {_names(missing)}"
    for name in ("id", "subject", "eventType", "eventTime"):
        if not isinstance(obj[name], str):
            return f"Event Grid field '{name}' must be a string, got {_json_type(obj[name])}"
    topic = obj.get("topic", "")
    data_version = obj.get("dataVersion", "")
    if not isinstance(topic, str):
        return f"Event Grid field 'topic' must be a string, got {_json_type(topic)}"
    if data_version is None:
        data_version = ""
    if not isinstance(data_version, str):
        return f"Event Grid field 'dataVersion' must be a string, got {_json_type(data_version)}"
    try:
        time, ticks = parse_time(obj["eventTime"])
    except ValueError as exc:
        return f"Event Grid field 'eventTime': {exc}"
    return Event(
        id=obj["id"],
        topic=topic,
        subject=obj["subject"],
        type=obj["eventType"],
        time=time,
        time_ticks=ticks,
        data=obj.get("data"),
        data_version=data_version,
        schema=Schema.EVENTGRID,
        extensions={},
        origin=origin,
        raw=obj,
    )


def _decode_cloudevent(
    obj: dict[str, Any], origin: Origin, default_time: tuple[datetime, int] | None
) -> Event | str:
    # As for Event Grid: the usual event in one pass, anything else through the checks.
    event_id = obj.get("id")
    source = obj.get("source")
    event_type = obj.get("type")
    subject = obj.get("subject", "")
    event_time = obj.get("time")
    if (
        type(event_id) is str
        and type(source) is str
        and type(event_type) is str
        and type(obj.get("specversion")) is str
        and type(subject) is str
        and type(event_time) is str
    ):
        parsed = _parse_utc(event_time)
        if parsed is not None:
            data = obj["data"] if "data" in obj else obj.get("data_base64")
            extensions = {k: v for k, v in obj.items() if k not in _CE_KNOWN}
            data_version = extensions.get("dataversion", "")
            return Event(
                event_id,
                source,
                subject,
                event_type,
                parsed[0],
                parsed[1],
                data,
                data_version if isinstance(data_version, str) else "",
                Schema.CLOUDEVENTS,
                extensions,
                origin,
                obj,
            )
    return _check_cloudevent(obj, origin, default_time)


def _check_cloudevent(
    obj: dict[str, Any], origin: Origin, default_time: tuple[datetime, int] | None
) -> Event | str:
    missing = [name for name in _CE_REQUIRED if name not in obj]
    if missing:
        return f"CloudEvent lacks required {_names(missing)}"
    for name in (*_CE_REQUIRED, "subject"):
        if name in obj and not isinstance(obj[name], str):
            return f"CloudEvent attribute '{name}' must be a string, got {_json_type(obj[name])}"
    if "time" in obj and obj["time"] is not None:
        try:
            time, ticks = parse_time(obj["time"])
        except ValueError as exc:
            return f"CloudEvent attribute 'time': {exc}"
    elif default_time is not None:
        time, ticks = default_time
    else:
        return "CloudEvent has no 'time' and no enqueued time to fall back on"
    if "data" in obj:
        data = obj["data"]
    elif "data_base64" in obj:
        data = obj["data_base64"]
    else:
        data = None
    extensions = {k: v for k, v in obj.items() if k not in _CE_KNOWN}
    data_version = extensions.get("dataversion", "")
    return Event(
        id=obj["id"],
        topic=obj["source"],
        subject=obj.get("subject") or "",
        type=obj["type"],
        time=time,
        time_ticks=ticks,
        data=data,
        data_version=data_version if isinstance(data_version, str) else "",
        schema=Schema.CLOUDEVENTS,
        extensions=extensions,
        origin=origin,
        raw=obj,
    )


def _names(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return ("field " if len(quoted) == 1 else "fields ") + ", ".join(quoted)


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


# --- data lookups ---------------------------------------------------------------------------


def lookup_key(mapping: Mapping[str, Any], key: str) -> Any:
    """One key of a JSON object: exact first, then the first case-insensitive match.

    The Azure ML samples mix `modelName` and `ModelName` (DESIGN §2), so a rule written for
    one casing must still see the other.
    """
    if key in mapping:
        return mapping[key]
    folded = key.casefold()
    longest = len(folded)  # casefold never shortens a string: longer keys cannot match
    for candidate, value in mapping.items():
        if (
            isinstance(candidate, str)
            and len(candidate) <= longest
            and candidate.casefold() == folded
        ):
            return value
    return MISSING


def lookup_data(data: Any, path: str | list[str]) -> Any:
    """Follow a dotted path (`modelTags.stage`) into `data`; MISSING where it runs out."""
    segments = path.split(".") if isinstance(path, str) else path
    value = data
    for segment in segments:
        if not isinstance(value, Mapping):
            return MISSING
        value = lookup_key(value, segment)
        if value is MISSING:
            return MISSING
    return value


def restore_event(raw: Mapping[str, Any], origin: Origin, time_ticks: int) -> Event:
    """Rebuild an event saved in partition state (its raw object, origin and exact time)."""
    seconds, fraction = divmod(time_ticks, 10_000_000)
    time = _EPOCH + timedelta(seconds=seconds, microseconds=fraction // 10)
    result = _decode_one(dict(raw), origin, (time, time_ticks))
    if isinstance(result, str):
        raise ValueError(f"saved event no longer decodes: {result}")
    return Event(
        id=result.id,
        topic=result.topic,
        subject=result.subject,
        type=result.type,
        time=time,
        time_ticks=time_ticks,
        data=result.data,
        data_version=result.data_version,
        schema=result.schema,
        extensions=result.extensions,
        origin=origin,
        raw=result.raw,
    )
