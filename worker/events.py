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

__all__ = [
    "MISSING",
    "Event",
    "Origin",
    "Rejection",
    "Schema",
    "decode_body",
    "lookup_data",
    "parse_time",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        return self.topic.casefold()

    @property
    def object_key(self) -> tuple[str, str]:
        return (self.topic_key, self.subject)

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


# --- time -------------------------------------------------------------------------------

_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):?(?P<om>\d{2}))?\Z"
)


def parse_time(text: str) -> tuple[datetime, int]:
    """Parse an ISO 8601 / RFC 3339 time into (aware UTC datetime, 100 ns ticks).

    Up to seven fractional digits are kept exactly (more are truncated); any offset is
    accepted and a missing one is read as UTC. Raises ValueError with a plain message.
    """
    match = _TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "")[:7].ljust(7, "0")
    try:
        naive = datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        raise ValueError(f"not a valid time: {text!r} ({exc})") from None
    offset = timedelta()
    if match.group("sign"):
        offset = timedelta(hours=int(match.group("oh")), minutes=int(match.group("om")))
        if match.group("sign") == "-":
            offset = -offset
    utc = naive.replace(tzinfo=UTC) - offset
    seconds = (utc - _EPOCH) // timedelta(seconds=1) + (1 if second == 60 else 0)
    ticks = seconds * 10_000_000 + int(fraction)
    return _EPOCH + timedelta(microseconds=ticks // 10), ticks


def ticks_of(moment: datetime) -> int:
    """100 ns ticks of an aware datetime (enqueued times, "now")."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_ticks(ticks: int) -> str:
    """Render ticks as RFC 3339 UTC with seven fractional digits (Event Grid's own form)."""
    seconds, fraction = divmod(ticks, 10_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:07d}Z"


# --- decoding -----------------------------------------------------------------------------

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
    raw_bytes = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"body is not UTF-8 ({exc.reason} at byte {exc.start})"
        return [], [Rejection(reason, origin, body=raw_bytes)]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        return [], [Rejection(reason, origin, body=raw_bytes)]
    except RecursionError:
        return [], [Rejection("body is not JSON (nested too deeply)", origin, body=raw_bytes)]

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
    for index, element in elements:
        result = _decode_one(element, origin, default_time)
        if isinstance(result, str):
            element_body = raw_bytes if index is None else _dump(element)
            rejections.append(Rejection(result, origin, index, element_body))
        else:
            events.append(result)
            default_time = (result.time, result.time_ticks)
    return events, rejections


def _dump(element: Any) -> bytes:
    try:
        return json.dumps(element, ensure_ascii=False).encode("utf-8")
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
    for candidate, value in mapping.items():
        if isinstance(candidate, str) and candidate.casefold() == folded:
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
