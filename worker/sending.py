"""`send`: publish message bodies from a JSON-lines file with the real async producer.

Sample traffic for `dev-hub` and tests. By default each message is keyed by its event's
subject, as the recommended Event Grid subscription (PartitionKey = subject) does, so all of
an object's events land on one partition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.jsontext import utf8_safe
from worker.settings import Settings
from worker.source import read_jsonl

__all__ = ["parse_properties", "send_file", "subject_of"]


def parse_properties(items: list[str]) -> dict[str, str]:
    properties = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--property {item!r}: write KEY=VALUE")
        properties[key] = value
    return properties


def subject_of(body: bytes) -> str | None:
    """The subject of the (first) event in a body; None when there is none to read."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, list) and document:
        document = document[0]
    if isinstance(document, dict) and isinstance(document.get("subject"), str):
        return utf8_safe(document["subject"])  # a partition key is AMQP text: no surrogate
    return None


async def send_file(
    settings: Settings,
    path: Path,
    *,
    connection_string: str | None,
    eventhub_name: str | None,
    by_subject: bool = True,
    partition_id: str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> tuple[int, str]:
    """Send every line; consecutive lines with the same key share a batch. Returns (n, hub)."""
    from azure.eventhub import EventData

    from worker.connections import producer_client

    if eventhub_name:
        settings = settings.model_copy(update={"eventhub_name": eventhub_name})
    producer = producer_client(settings, connection_string)
    sent = 0
    async with producer:
        # Round-robin per message, as Event Grid without a PartitionKey does: assign the
        # partitions ourselves so that consecutive messages can still share batches.
        spread = await producer.get_partition_ids() if not by_subject and not partition_id else []
        batch: Any = None
        batch_key: tuple[str | None, str | None] | None = None

        async def flush() -> None:
            nonlocal batch, sent
            if batch is not None and len(batch):
                await producer.send_batch(batch)
                sent += len(batch)
            batch = None

        for number, (body, _origin) in enumerate(read_jsonl(path)):
            key = subject_of(body) if by_subject and partition_id is None else None
            target = spread[number % len(spread)] if spread else partition_id
            if batch is None or batch_key != (key, target):
                await flush()
                batch = await producer.create_batch(partition_key=key, partition_id=target)
                batch_key = (key, target)
            event = EventData(body)
            if properties:
                event.properties = dict(properties)
            try:
                batch.add(event)
            except ValueError:  # batch full
                await flush()
                batch = await producer.create_batch(partition_key=key, partition_id=target)
                batch.add(event)
        await flush()
        return sent, producer.eventhub_name
