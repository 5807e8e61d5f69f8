"""Turn a producer's delivery into stored events, and stored events into consumer deliveries.

Why on raw bytes: Event Hubs hands every consumer the application properties, properties and
body exactly as the producer sent them, adding only the broker's message annotations. So
dev-hub never decodes a body: it splits the encoded message into its sections, keeps the
header and everything from the properties section on verbatim, drops the producer's delivery
annotations, and rebuilds only the message-annotations map (the producer's own entries plus
`x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time` and `x-opt-partition-key`).

Batches (`EventDataBatch`) travel as one message of format 0x80013700 whose Data sections are
each a complete encoded message. proton's Python binding does not expose a delivery's message
format, so a batch is recognised by its shape: only Data body sections, every one of which
parses completely as a sequence of AMQP message sections.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.devhub.codec import (
    AmqpDecodeError,
    decode_value,
    encode_long,
    encode_map,
    encode_section,
    encode_string,
    encode_symbol,
    encode_timestamp,
    skip_value,
)

__all__ = [
    "InboundEvent",
    "MessageFormatError",
    "Section",
    "consumer_payload",
    "sections",
    "split_delivery",
]

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

_SECTION_NAMES = {
    b"amqp:header:list": HEADER,
    b"amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    b"amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    b"amqp:properties:list": PROPERTIES,
    b"amqp:application-properties:map": APPLICATION_PROPERTIES,
    b"amqp:data:binary": DATA,
    b"amqp:amqp-sequence:list": AMQP_SEQUENCE,
    b"amqp:amqp-value:*": AMQP_VALUE,
    b"amqp:footer:map": FOOTER,
}

PARTITION_KEY = "x-opt-partition-key"
SEQUENCE_NUMBER = "x-opt-sequence-number"
OFFSET = "x-opt-offset"
ENQUEUED_TIME = "x-opt-enqueued-time"
_BROKER_KEYS = frozenset({PARTITION_KEY, SEQUENCE_NUMBER, OFFSET, ENQUEUED_TIME})

_SEQUENCE_KEY = encode_symbol(SEQUENCE_NUMBER)
_OFFSET_KEY = encode_symbol(OFFSET)
_ENQUEUED_KEY = encode_symbol(ENQUEUED_TIME)
_PARTITION_KEY_KEY = encode_symbol(PARTITION_KEY)


class MessageFormatError(ValueError):
    """A delivery that is not a well-formed AMQP message."""


@dataclass(frozen=True, slots=True)
class Section:
    """Where one message section sits in an encoded message."""

    code: int
    start: int  # of the section's descriptor
    value_start: int
    end: int


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One event as a producer sent it, cut into the parts dev-hub keeps.

    `head` is the header section (or empty), `annotations` the producer's own message
    annotation entries (encoded key/value pairs, broker keys removed) and their count, `tail`
    every section from the properties on, byte for byte.
    """

    head: bytes
    annotations: bytes
    annotation_count: int
    tail: bytes
    partition_key: str | None


def sections(buf: bytes | memoryview) -> list[Section]:
    """Cut an encoded message into its sections (MessageFormatError if it is not one)."""
    found: list[Section] = []
    pos = 0
    total = len(buf)
    while pos < total:
        if buf[pos] != 0x00 or pos + 2 >= total:
            raise MessageFormatError("a message section must be a described value")
        marker = buf[pos + 1]
        if marker == 0x53:
            code, value_start = buf[pos + 2], pos + 3
        elif marker == 0x80:
            code, value_start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
        elif marker in (0xA3, 0xB3):
            value_start = skip_value(buf, pos + 1)
            name, _ = decode_value(buf, pos + 1)
            code = _SECTION_NAMES.get(name.encode("ascii"), -1)
        else:
            raise MessageFormatError("unknown message section descriptor")
        if not HEADER <= code <= FOOTER:
            raise MessageFormatError("unknown message section")
        end = skip_value(buf, value_start)
        found.append(Section(code, pos, value_start, end))
        pos = end
    if not found:
        raise MessageFormatError("an empty message")
    return found


def _binary_content(buf: bytes, section: Section) -> memoryview:
    constructor = buf[section.value_start]
    if constructor == 0xA0:
        return memoryview(buf)[section.value_start + 2 : section.end]
    if constructor == 0xB0:
        return memoryview(buf)[section.value_start + 5 : section.end]
    raise MessageFormatError("a Data section must hold binary")


def _looks_like_message(data: memoryview) -> bool:
    if len(data) < 4 or data[0] != 0x00 or data[1] != 0x53 or not HEADER <= data[2] <= FOOTER:
        return False
    try:
        sections(data)
    except (MessageFormatError, AmqpDecodeError, UnicodeDecodeError):
        return False
    return True


def _annotations(buf: bytes | memoryview, section: Section) -> tuple[bytes, int, str | None]:
    """Split a message-annotations section into kept pairs, their count and the partition key."""
    value, _ = decode_value(buf, section.value_start)  # validates the whole map
    if not isinstance(value, dict):
        raise MessageFormatError("message annotations must be a map")
    constructor = buf[section.value_start]
    if constructor == 0xC1:
        count, pos = buf[section.value_start + 2], section.value_start + 3
    elif constructor == 0xD1:
        count = int.from_bytes(buf[section.value_start + 5 : section.value_start + 9], "big")
        pos = section.value_start + 9
    else:
        raise MessageFormatError("message annotations must be a map")
    kept = bytearray()
    kept_count = 0
    partition_key: str | None = None
    for _ in range(count // 2):
        key_end = skip_value(buf, pos)
        value_end = skip_value(buf, key_end)
        key, _ = decode_value(buf, pos)
        if key == PARTITION_KEY:
            raw, _ = decode_value(buf, key_end)
            if isinstance(raw, bytes):
                partition_key = raw.decode("utf-8", "replace")
            elif raw is not None:
                partition_key = str(raw)
        elif key not in _BROKER_KEYS:
            kept += buf[pos:value_end]
            kept_count += 1
        pos = value_end
    return bytes(kept), kept_count, partition_key


def _event(buf: bytes, parts: list[Section], partition_key: str | None) -> InboundEvent:
    head = b""
    kept, kept_count, own_key = b"", 0, None
    tail = bytearray()
    for section in parts:
        if section.code == HEADER:
            head = buf[section.start : section.end]
        elif section.code == MESSAGE_ANNOTATIONS:
            kept, kept_count, own_key = _annotations(buf, section)
        elif section.code != DELIVERY_ANNOTATIONS:
            tail += buf[section.start : section.end]
    return InboundEvent(
        head, kept, kept_count, bytes(tail), partition_key if partition_key else own_key
    )


def split_delivery(payload: bytes) -> tuple[str | None, list[InboundEvent]]:
    """Return the delivery's partition key and its events (one, or a batch's several)."""
    try:
        parts = sections(payload)
        bodies = [s for s in parts if s.code in (DATA, AMQP_SEQUENCE, AMQP_VALUE)]
        batch_key: str | None = None
        for section in parts:
            if section.code == MESSAGE_ANNOTATIONS:
                batch_key = _annotations(payload, section)[2]
        is_batch = bool(bodies) and all(
            s.code == DATA and _looks_like_message(_binary_content(payload, s)) for s in bodies
        )
        if not is_batch:
            event = _event(payload, parts, None)
            return event.partition_key, [event]
        events = []
        for section in bodies:
            inner = bytes(_binary_content(payload, section))
            events.append(_event(inner, sections(inner), batch_key))
        if batch_key is None:
            keys = {e.partition_key for e in events}
            batch_key = keys.pop() if len(keys) == 1 else None
        return batch_key, events
    except (AmqpDecodeError, UnicodeDecodeError) as exc:
        raise MessageFormatError(str(exc)) from exc


def consumer_payload(
    event: InboundEvent, sequence_number: int, offset: int, enqueued_ms: int
) -> bytes:
    """The encoded message a consumer receives for this event: broker annotations stamped."""
    pairs = bytearray(event.annotations)
    pairs += _SEQUENCE_KEY + encode_long(sequence_number)
    pairs += _OFFSET_KEY + encode_string(str(offset))
    pairs += _ENQUEUED_KEY + encode_timestamp(enqueued_ms)
    count = event.annotation_count + 3
    if event.partition_key is not None:
        pairs += _PARTITION_KEY_KEY + encode_string(event.partition_key)
        count += 1
    return (
        event.head
        + encode_section(MESSAGE_ANNOTATIONS, encode_map(bytes(pairs), count))
        + event.tail
    )
