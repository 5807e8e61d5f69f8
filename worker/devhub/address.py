"""Names and addresses: hub specs on the command line, connection strings, AMQP node paths.

Why in one place: the same hub name travels through three spellings (`--hub name:4`, the
connection string's `EntityPath`, and link addresses such as
`amqps://host:port/<hub>/ConsumerGroups/<cg>/Partitions/<id>`), and Event Hubs compares
entity names case-insensitively - keeping the rules together keeps them consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_PARTITIONS",
    "MAX_PARTITIONS",
    "Node",
    "NodeKind",
    "check_hub",
    "connection_string",
    "parse_hub_spec",
    "parse_node",
]

DEFAULT_HUB = "aml-events"
DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 1024  # Event Hubs Dedicated's limit; Standard allows 32

# Event Hubs entity names: letters, digits, '.', '-', '_'; start and end with a letter or
# digit; at most 256 characters.
_HUB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,254}[A-Za-z0-9])?$")


def parse_hub_spec(spec: str) -> tuple[str, int]:
    """`"name"` or `"name:partitions"` -> (name, partitions); ValueError says what is wrong."""
    name, sep, count_text = spec.strip().partition(":")
    if not sep:
        return check_hub(name, DEFAULT_PARTITIONS)
    try:
        count = int(count_text)
    except ValueError:
        raise ValueError(
            f"invalid partition count {count_text!r} in {spec!r}: expected a whole number"
        ) from None
    return check_hub(name, count)


def check_hub(name: str, partitions: int) -> tuple[str, int]:
    """Validate a hub name and partition count as Event Hubs would; ValueError if invalid."""
    if not _HUB_NAME.match(name):
        raise ValueError(
            f"invalid hub name {name!r}: use letters, digits, '.', '-' and '_', starting and "
            "ending with a letter or digit (at most 256 characters)"
        )
    if isinstance(partitions, bool) or not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(
            f"invalid partition count {partitions!r} for hub {name!r}: must be between 1 and "
            f"{MAX_PARTITIONS}"
        )
    return name, partitions


def connection_string(host: str, port: int, hub: str | None = None) -> str:
    """The connection string the real `azure-eventhub` clients use to reach dev-hub.

    The development-emulator form: azure-eventhub's `_parse_conn_str` turns TLS off only with
    `UseDevelopmentEmulator=true` (lower-case); dev-hub never checks the key.
    """
    text = (
        f"Endpoint=sb://{host}:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
    )
    return f"{text};EntityPath={hub}" if hub else text


class NodeKind(StrEnum):
    CBS = "$cbs"
    MANAGEMENT = "$management"
    HUB = "hub"  # a producer target: the hub or one of its partitions
    CONSUMER = "consumer"  # a receiver source: hub, consumer group and partition
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Node:
    """What a link address points at (names as the client spelled them)."""

    kind: NodeKind
    hub: str = ""
    consumer_group: str = ""
    partition_id: str | None = None


def parse_node(address: str | None) -> Node:
    """Read a link address; the scheme and host are ignored (the client keeps `amqps://`)."""
    if not address:
        return Node(NodeKind.UNKNOWN)
    path = address
    if "://" in path:
        path = path.split("://", 1)[1].partition("/")[2]
    parts = [p for p in path.split("/") if p]
    if len(parts) == 1 and parts[0].lower() in (NodeKind.CBS, NodeKind.MANAGEMENT):
        return Node(NodeKind(parts[0].lower()))
    lowered = [p.lower() for p in parts]
    if len(parts) == 1:
        return Node(NodeKind.HUB, hub=parts[0])
    if len(parts) == 3 and lowered[1] == "partitions":
        return Node(NodeKind.HUB, hub=parts[0], partition_id=parts[2])
    if len(parts) == 5 and lowered[1] == "consumergroups" and lowered[3] == "partitions":
        return Node(NodeKind.CONSUMER, hub=parts[0], consumer_group=parts[2], partition_id=parts[4])
    return Node(NodeKind.UNKNOWN)
