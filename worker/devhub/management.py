"""The request/response nodes: `$cbs` (token put) and `$management` (hub and partition READ).

Why: before any send or receive the client puts a token on `$cbs`, and `get_partition_ids`,
`get_eventhub_properties` and `get_partition_properties` (which the load balancer uses) are
READs on `$management`. dev-hub accepts any token and answers READs with the fields and types
the SDK reads (`azure/eventhub/_client_base.py`); the reply's `correlation-id` is the request's
`message-id` re-sent byte for byte, so the client (which compares UUIDs) finds its operation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.devhub.address import NodeKind
from worker.devhub.codec import (
    NULL,
    AmqpDecodeError,
    Timestamp,
    decode_value,
    encode_int,
    encode_list32,
    encode_map,
    encode_section,
    encode_string,
    encode_value,
    skip_value,
)
from worker.devhub.message import (
    AMQP_VALUE,
    APPLICATION_PROPERTIES,
    PROPERTIES,
    MessageFormatError,
    sections,
)
from worker.devhub.store import Store

__all__ = ["Reply", "Request", "answer", "encode_reply", "parse_request"]

EVENTHUB_TYPE = "com.microsoft:eventhub"
PARTITION_TYPE = "com.microsoft:partition"
PUT_TOKEN = "put-token"
READ = "READ"


@dataclass(frozen=True, slots=True)
class Request:
    """A request message: its raw message-id, reply-to, application properties and body."""

    message_id: bytes  # encoded, as sent (NULL when absent)
    reply_to: str | None
    application_properties: dict[str, Any]
    body: Any


@dataclass(frozen=True, slots=True)
class Reply:
    status_code: int
    description: str
    body: Any = None


def parse_request(payload: bytes) -> Request:
    message_id, reply_to = NULL, None
    properties: dict[str, Any] = {}
    body: Any = None
    try:
        for section in sections(payload):
            if section.code == PROPERTIES:
                message_id, reply_to = _id_and_reply_to(payload, section.value_start)
            elif section.code == APPLICATION_PROPERTIES:
                value, _ = decode_value(payload, section.value_start)
                properties = {str(k): v for k, v in (value or {}).items()}
            elif section.code == AMQP_VALUE:
                body, _ = decode_value(payload, section.value_start)
    except (AmqpDecodeError, UnicodeDecodeError) as exc:
        raise MessageFormatError(str(exc)) from exc
    return Request(message_id, reply_to, properties, body)


def _id_and_reply_to(payload: bytes, pos: int) -> tuple[bytes, str | None]:
    """The message-id (field 0, raw) and reply-to (field 4) of a properties list."""
    constructor = payload[pos]
    if constructor == 0x45:
        return NULL, None
    if constructor == 0xC0:
        count, cursor = payload[pos + 2], pos + 3
    elif constructor == 0xD0:
        count, cursor = int.from_bytes(payload[pos + 5 : pos + 9], "big"), pos + 9
    else:
        raise MessageFormatError("message properties must be a list")
    message_id, reply_to = NULL, None
    for index in range(min(count, 5)):
        end = skip_value(payload, cursor)
        if index == 0:
            message_id = payload[cursor:end]
        elif index == 4:
            value, _ = decode_value(payload, cursor)
            reply_to = value if isinstance(value, str) else None
        cursor = end
    return message_id, reply_to


def answer(node: NodeKind, request: Request, store: Store) -> Reply:
    """What dev-hub answers to a request on `$cbs` or `$management`."""
    props = request.application_properties
    operation = props.get("operation")
    if node is NodeKind.CBS:
        if operation != PUT_TOKEN:
            return Reply(400, f"unsupported $cbs operation {operation!r}; expected 'put-token'")
        return Reply(202, "Accepted")
    if operation != READ:
        return Reply(400, f"unsupported $management operation {operation!r}; expected 'READ'")
    name = str(props.get("name") or "")
    hub = store.hub(name)
    if hub is None:
        return Reply(404, f"the messaging entity '{name}' could not be found")
    kind = props.get("type")
    if kind == EVENTHUB_TYPE:
        return Reply(
            200,
            "OK",
            {
                "name": hub.name,
                "type": EVENTHUB_TYPE,
                "created_at": Timestamp(hub.created_at_ms),
                "partition_count": len(hub.partitions),
                "partition_ids": list(hub.partitions),
            },
        )
    if kind == PARTITION_TYPE:
        partition_id = str(props.get("partition"))
        partition = hub.partitions.get(partition_id)
        if partition is None:
            return Reply(
                404,
                f"partition {partition_id!r} does not exist in hub '{hub.name}' "
                f"(partitions: {', '.join(hub.partitions)})",
            )
        p = partition.properties()
        return Reply(
            200,
            "OK",
            {
                "name": hub.name,
                "type": PARTITION_TYPE,
                "partition": p.partition_id,
                "begin_sequence_number": p.begin_sequence_number,
                "last_enqueued_sequence_number": p.last_enqueued_sequence_number,
                "last_enqueued_offset": p.last_enqueued_offset,
                "last_enqueued_time_utc": Timestamp(p.last_enqueued_time_ms),
                "is_partition_empty": p.is_empty,
            },
        )
    return Reply(400, f"unsupported $management type {kind!r}")


def encode_reply(request: Request, reply: Reply) -> bytes:
    """The reply message: correlation-id, status-code, status-description, amqp-value body."""
    properties = encode_list32([NULL, NULL, NULL, NULL, NULL, request.message_id])
    status = (
        encode_value("status-code")
        + encode_int(reply.status_code)
        + encode_value("status-description")
        + encode_string(reply.description)
    )
    return (
        encode_section(PROPERTIES, properties)
        + encode_section(APPLICATION_PROPERTIES, encode_map(status, 2))
        + encode_section(AMQP_VALUE, encode_value(reply.body))
    )
