"""dev-hub against the real `azure-eventhub` clients (async producer and consumer), on loopback.

Every assertion is about what the SDK exposes (`EventData`, partition properties, `on_error`),
so a server that answers differently from Event Hubs where a consumer's guarantees depend on it
fails here. The server runs in-process on a free port; the entry point runs as a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub import EventData
from azure.eventhub import EventHubConsumerClient as SyncConsumerClient
from azure.eventhub import EventHubProducerClient as SyncProducerClient
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from proton import symbol
from proton.reactor import LinkOption
from proton.utils import BlockingConnection, LinkDetached

from worker.devhub import (
    DEFAULT_HUB,
    DEFAULT_PARTITIONS,
    DevHub,
    connection_string,
    parse_hub_spec,
)
from worker.devhub.partitioning import partition_index
from worker.devhub.store import Partition
from worker.errors import ConfigError

HUB = "aml-events"
LB_INTERVAL_S = 0.5
Received = list[tuple[str, EventData]]


@pytest.fixture
async def hub() -> AsyncIterator[DevHub]:
    async with DevHub(port=0, hubs={HUB: 4, "other": 2}) as server:
        yield server


def producer(server: DevHub | str, hub_name: str = HUB, **kwargs: Any) -> EventHubProducerClient:
    conn = server if isinstance(server, str) else server.connection_string(hub_name)
    return EventHubProducerClient.from_connection_string(conn, **kwargs)


async def collect(
    conn: str,
    until: Callable[[Received], bool],
    *,
    timeout_s: float = 10.0,
    consumer_group: str = "$Default",
    client_kwargs: dict[str, Any] | None = None,
    **receive_kwargs: Any,
) -> Received:
    """Receive with the real consumer client until `until(received)` holds or time runs out."""
    received: Received = []
    done = asyncio.Event()

    async def on_event(context: Any, event: EventData | None) -> None:
        if event is not None:
            received.append((context.partition_id, event))
            if until(received):
                done.set()

    client = EventHubConsumerClient.from_connection_string(
        conn,
        consumer_group=consumer_group,
        load_balancing_interval=LB_INTERVAL_S,
        **(client_kwargs or {}),
    )
    task = asyncio.create_task(client.receive(on_event, **receive_kwargs))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await client.close()
        await task
    return received


async def send_to_each(client: EventHubProducerClient, bodies_of: dict[str, list[str]]) -> None:
    """One batch per partition, sent concurrently (a first send opens a link: slow in the SDK)."""

    async def send(partition_id: str, texts: list[str]) -> None:
        batch = await client.create_batch(partition_id=partition_id)
        for text in texts:
            batch.add(EventData(text))
        await client.send_batch(batch)

    await asyncio.gather(*(send(p, texts) for p, texts in bodies_of.items()))


def count_reaches(n: int) -> Callable[[Received], bool]:
    return lambda received: len(received) >= n


def bodies(received: Received) -> list[str]:
    return [event.body_as_str() for _, event in received]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- names and connection strings ----------------------------------------------------------


def test_parse_hub_spec() -> None:
    """`name` gets the default partition count, `name:N` sets it; bad specs say why."""
    assert parse_hub_spec("aml-events") == ("aml-events", DEFAULT_PARTITIONS)
    assert parse_hub_spec("hub.2_x:8") == ("hub.2_x", 8)
    for bad, word in [("", "hub name"), ("-x", "hub name"), ("a:0", "between"), ("a:x", "whole")]:
        with pytest.raises(ValueError, match=word):
            parse_hub_spec(bad)


def test_connection_string_is_the_emulator_form() -> None:
    """TLS is off only with `UseDevelopmentEmulator=true`; EntityPath only when a hub is given."""
    text = connection_string("127.0.0.1", 5999, DEFAULT_HUB)
    assert text == (
        "Endpoint=sb://127.0.0.1:5999;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;EntityPath=aml-events"
    )
    assert "EntityPath" not in connection_string("127.0.0.1", 5999)


# --- $management -----------------------------------------------------------------------------


async def test_hub_and_partition_properties(hub: DevHub) -> None:
    """get_eventhub_properties / get_partition_properties report Event Hubs' fields."""
    async with producer(hub) as client, producer(hub, "other") as other:
        props, ids, empty, other_props = await asyncio.gather(
            client.get_eventhub_properties(),
            client.get_partition_ids(),
            client.get_partition_properties("2"),
            other.get_eventhub_properties(),
        )
        await client.send_event(EventData("a"), partition_id="2")
        await client.send_event(EventData("b"), partition_id="2")
        filled = await client.get_partition_properties("2")
    assert props["eventhub_name"] == HUB
    assert props["partition_ids"] == ids == ["0", "1", "2", "3"]
    assert abs(props["created_at"] - now()) < dt.timedelta(minutes=1)
    assert other_props["partition_ids"] == ["0", "1"]
    assert empty["id"] == "2"
    assert empty["eventhub_name"] == HUB
    assert empty["is_empty"] is True
    assert empty["beginning_sequence_number"] == 0
    assert empty["last_enqueued_sequence_number"] == -1
    assert empty["last_enqueued_offset"] == "-1"
    assert filled["is_empty"] is False
    assert filled["last_enqueued_sequence_number"] == 1
    assert abs(filled["last_enqueued_time_utc"] - now()) < dt.timedelta(minutes=1)
    received = await collect(
        hub.connection_string(HUB), count_reaches(2), partition_id="2", starting_position="-1"
    )
    assert filled["last_enqueued_offset"] == received[-1][1].offset
    assert filled["last_enqueued_time_utc"] == received[-1][1].enqueued_time


# --- producers -------------------------------------------------------------------------------


async def test_partition_key_routing_and_annotations(hub: DevHub) -> None:
    """One key always lands in one partition (a stable hash), different keys spread out, and
    each event carries sequence number, offset, enqueued time, partition key and properties."""
    keys = [f"experiments/e/runs/r{i}" for i in range(24)]
    before = now() - dt.timedelta(seconds=1)
    async with producer(hub) as client:
        for round_ in range(2):
            for key in keys:
                event = EventData(f"{key}#{round_}")
                event.properties = {"subject": key, "round": round_}
                await client.send_event(event, partition_key=key)
        batch = await client.create_batch(partition_key=keys[0])
        batch.add(EventData(f"{keys[0]}#batch"))
        await client.send_batch(batch)
    received = await collect(
        hub.connection_string(HUB), count_reaches(2 * len(keys) + 1), starting_position="-1"
    )
    assert len(received) == 2 * len(keys) + 1
    partitions_of: dict[str, set[str]] = defaultdict(set)
    for partition_id, event in received:
        assert event.partition_key is not None
        partitions_of[event.partition_key.decode()].add(partition_id)
    assert sorted(partitions_of) == sorted(keys)
    assert all(len(p) == 1 for p in partitions_of.values()), partitions_of
    used = {p for ps in partitions_of.values() for p in ps}
    assert len(used) >= 3, used
    # Deterministic: the lookup3 mapping, the same in every process and after restarts.
    for key, ps in partitions_of.items():
        assert ps == {str(partition_index(key, 4))}

    by_partition: dict[str, list[EventData]] = defaultdict(list)
    for partition_id, event in received:
        by_partition[partition_id].append(event)
    for events in by_partition.values():
        assert [e.sequence_number for e in events] == list(range(len(events)))
        offsets = [int(e.offset) for e in events]
        assert offsets == sorted(set(offsets))
    got = next(e for _, e in received if e.body_as_str() == f"{keys[5]}#1")
    assert got.partition_key == keys[5].encode()
    assert got.properties == {b"subject": keys[5].encode(), b"round": 1}
    assert isinstance(got.offset, str)
    assert got.enqueued_time is not None and before <= got.enqueued_time <= now()
    system = got.system_properties
    assert system[b"x-opt-sequence-number"] == got.sequence_number
    assert system[b"x-opt-offset"] == got.offset.encode()
    assert system[b"x-opt-partition-key"] == keys[5].encode()


async def sizes(client: EventHubProducerClient) -> list[int]:
    """Events per partition, from get_partition_properties (asked concurrently: each is slow)."""
    properties = await asyncio.gather(*(client.get_partition_properties(p) for p in "0123"))
    return [p["last_enqueued_sequence_number"] + 1 for p in properties]


async def test_round_robin_without_key(hub: DevHub) -> None:
    """Sends without key or partition rotate over the partitions; a batch stays together."""
    async with producer(hub) as client:
        for i in range(8):
            await client.send_event(EventData(f"rr{i}"))
        counts = await sizes(client)
        assert counts == [2, 2, 2, 2]
        batch = await client.create_batch()
        for i in range(3):
            batch.add(EventData(f"together{i}"))
        await client.send_batch(batch)
        after = await sizes(client)
    assert sorted(a - c for a, c in zip(after, counts, strict=True)) == [0, 0, 0, 3]


async def test_batch_to_partition_keeps_each_event(hub: DevHub) -> None:
    """An EventDataBatch is split into its events, each with its own properties and body; a
    ~1 MB event crosses as a multi-frame delivery and comes back byte for byte; a second
    consumer group reads the same events."""
    large = os.urandom(1_000_000)
    async with producer(hub) as client:
        batch = await client.create_batch(partition_id="3")
        for i in range(5):
            event = EventData(f'{{"n": {i}}}')
            event.properties = {"n": i, "kind": f"k{i}", "flag": i % 2 == 0}
            event.content_type = "application/json"
            batch.add(event)
        await client.send_batch(batch)
        await client.send_event(EventData("single"), partition_id="3")
        await client.send_event(EventData(large), partition_id="3")
    # Any consumer group name works (created on first use) and each group sees every event.
    received, in_other_group = await asyncio.gather(
        *(
            collect(
                hub.connection_string(HUB),
                count_reaches(7),
                consumer_group=group,
                partition_id="3",
                starting_position="-1",
            )
            for group in ("$Default", f"analytics-{uuid.uuid4().hex[:6]}")
        )
    )
    assert bodies(in_other_group[:6]) == bodies(received[:6])
    assert len(in_other_group) == 7
    events = [event for _, event in received]
    assert [e.body_as_str() for e in events[:6]] == [f'{{"n": {i}}}' for i in range(5)] + ["single"]
    assert b"".join(events[6].body) == large
    assert [e.sequence_number for e in events] == list(range(7))
    for i, event in enumerate(events[:5]):
        assert event.properties == {b"n": i, b"kind": f"k{i}".encode(), b"flag": i % 2 == 0}
        assert event.content_type == "application/json"
        assert event.partition_key is None
    assert not events[5].properties
    offsets = [int(e.offset) for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == 7


def attach_error(port: int, address: str, *, sender: bool) -> str:
    """Attach with proton's own blocking client; the error condition of the detach, if any."""
    connection = BlockingConnection(
        f"amqp://127.0.0.1:{port}", allowed_mechs="ANONYMOUS", timeout=10
    )
    try:
        if sender:
            connection.create_sender(address)
        else:
            connection.create_receiver(address)
        return ""
    except LinkDetached as exc:
        return str(exc.condition or "detached")
    finally:
        connection.close()


async def test_unknown_entities_are_refused(hub: DevHub) -> None:
    """Unknown hubs and partitions: the SDK gets a 404 from $management, and a link to them is
    attached then detached with amqp:not-found (seen with proton's client, because the SDK
    checks partition ids itself before it attaches)."""
    async with producer(hub, "no-such-hub", retry_total=0) as client:
        with pytest.raises(Exception, match=r"404"):
            await client.get_eventhub_properties()
    cases = [
        (f"{HUB}/ConsumerGroups/$Default/Partitions/9", False, "amqp:not-found"),
        ("no-such-hub/ConsumerGroups/$Default/Partitions/0", False, "amqp:not-found"),
        (f"amqps://127.0.0.1/{HUB}/Partitions/4", True, "amqp:not-found"),
        ("no-such-hub", True, "amqp:not-found"),
        (f"{HUB}/ConsumerGroups/any-group/Partitions/3", False, ""),
        (f"{HUB}/Partitions/3", True, ""),
    ]
    for address, sender, expected in cases:
        assert await asyncio.to_thread(attach_error, hub.port, address, sender=sender) == expected


# --- consumers -------------------------------------------------------------------------------


async def first_events(
    conn: str, positions: dict[str, Any], inclusive: dict[str, bool], *, poke: Any = None
) -> dict[str, EventData]:
    """The first event each partition in `positions` delivers from its start position."""
    firsts: dict[str, EventData] = {}
    done = asyncio.Event()

    async def on_event(context: Any, event: EventData | None) -> None:
        if event is not None and context.partition_id in positions:
            firsts.setdefault(context.partition_id, event)
            if set(firsts) == set(positions):
                done.set()

    client = EventHubConsumerClient.from_connection_string(
        conn, consumer_group="$Default", load_balancing_interval=LB_INTERVAL_S
    )
    task = asyncio.create_task(
        client.receive(on_event, starting_position=positions, starting_position_inclusive=inclusive)
    )
    try:
        async with asyncio.timeout(15):
            while not done.is_set():
                if poke is not None:
                    await poke()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.3)
    finally:
        await client.close()
        await task
    return firsts


async def test_starting_positions(hub: DevHub) -> None:
    """-1, @latest, sequence number, offset and enqueued time, inclusive and exclusive."""
    conn = hub.connection_string(HUB)
    async with producer(hub) as client:
        for group, start in (("a", 0), ("b", 5)):
            await send_to_each(
                client, {p: [f"{group}{i}" for i in range(start, start + 5)] for p in "0123"}
            )
            await asyncio.sleep(0.02)  # the second group gets a later enqueued time

        everything = await collect(conn, count_reaches(40), starting_position="-1")
        by_partition: dict[str, list[EventData]] = defaultdict(list)
        for partition_id, event in everything:
            by_partition[partition_id].append(event)
        assert {p: len(e) for p, e in by_partition.items()} == {p: 10 for p in "0123"}
        for events in by_partition.values():
            assert [e.sequence_number for e in events] == list(range(10))
        p0, p1, p2, p3 = (by_partition[p] for p in "0123")
        assert p0[4].enqueued_time < p0[5].enqueued_time

        async def send_late() -> None:  # until the @latest receiver has seen one
            await client.send_event(EventData("late"), partition_id="3")

        by_number, by_time = await asyncio.gather(
            first_events(
                conn,
                {"0": 3, "1": 3, "2": p2[5].offset, "3": p3[5].offset},
                {"0": True, "1": False, "2": True, "3": False},
            ),
            first_events(
                conn,
                {"0": p0[5].enqueued_time, "1": p1[4].enqueued_time, "2": "-1", "3": "@latest"},
                {"0": True, "1": False, "2": False, "3": False},
                poke=send_late,
            ),
        )
    assert {p: e.sequence_number for p, e in by_number.items()} == {
        "0": 3,
        "1": 4,
        "2": 5,
        "3": 6,
    }
    firsts = by_time
    assert {p: e.sequence_number for p, e in firsts.items() if p != "3"} == {
        "0": 5,
        "1": 5,
        "2": 0,
    }
    assert firsts["3"].body_as_str() == "late"
    assert firsts["3"].sequence_number >= 10


async def test_bad_position_is_argument_out_of_range(hub: DevHub) -> None:
    """A start beyond the end is refused with Event Hubs' argument-out-of-range condition."""
    errors: list[Exception] = []
    received: list[EventData] = []

    async def on_event(context: Any, event: EventData | None) -> None:
        if event is not None:
            received.append(event)

    async def on_error(context: Any, error: Exception) -> None:
        errors.append(error)

    consumer = EventHubConsumerClient.from_connection_string(
        hub.connection_string(HUB),
        consumer_group="$Default",
        load_balancing_interval=LB_INTERVAL_S,
        retry_total=0,
    )
    task = asyncio.create_task(
        consumer.receive(on_event, partition_id="0", starting_position=100, on_error=on_error)
    )
    try:
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.05)
    finally:
        await consumer.close()
        await task
    assert received == []
    assert any("argument-out-of-range" in str(e) for e in errors), errors


async def test_higher_epoch_steals_the_partition(hub: DevHub) -> None:
    """owner_level 2 detaches owner_level 1 (amqp:link:stolen); only the new owner gets events."""
    conn = hub.connection_string(HUB)
    first: list[str] = []
    first_errors: list[Exception] = []
    second: list[str] = []
    got_e1 = asyncio.Event()
    got_e2 = asyncio.Event()

    async def on_first(context: Any, event: EventData | None) -> None:
        if event is not None:
            first.append(event.body_as_str())
            got_e1.set()

    async def on_first_error(context: Any, error: Exception) -> None:
        first_errors.append(error)

    async def on_second(context: Any, event: EventData | None) -> None:
        if event is not None:
            second.append(event.body_as_str())
            if event.body_as_str() == "e2":
                got_e2.set()

    old = EventHubConsumerClient.from_connection_string(
        conn, consumer_group="$Default", load_balancing_interval=LB_INTERVAL_S
    )
    new = EventHubConsumerClient.from_connection_string(
        conn, consumer_group="$Default", load_balancing_interval=LB_INTERVAL_S
    )
    old_task = asyncio.create_task(
        old.receive(
            on_first,
            partition_id="0",
            owner_level=1,
            starting_position="-1",
            on_error=on_first_error,
        )
    )
    new_task: asyncio.Task[None] | None = None
    try:
        async with producer(hub) as client:
            await client.send_event(EventData("e1"), partition_id="0")
            await asyncio.wait_for(got_e1.wait(), 10)
            new_task = asyncio.create_task(
                new.receive(on_second, partition_id="0", owner_level=2, starting_position="-1")
            )
            for _ in range(100):
                if first_errors:
                    break
                await asyncio.sleep(0.05)
            await client.send_event(EventData("e2"), partition_id="0")
            await asyncio.wait_for(got_e2.wait(), 10)
            await asyncio.sleep(0.3)  # room for a (wrong) delivery to the old owner
    finally:
        await asyncio.gather(old.close(), new.close())
        await asyncio.gather(old_task, *([new_task] if new_task is not None else []))
    assert any("link:stolen" in str(e) for e in first_errors), first_errors
    assert first == ["e1"]
    assert second == ["e1", "e2"]


class _Epoch(LinkOption):
    """Attach with the `com.microsoft:epoch` link property, as the SDK's owner_level does."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def apply(self, link: Any) -> None:
        link.properties = {symbol("com.microsoft:epoch"): self.epoch}


def attach_outcomes(port: int, epochs: list[int | None]) -> list[str]:
    """Attach one receiver per connection (proton's client) with each epoch, in order."""
    address = f"{HUB}/ConsumerGroups/g1/Partitions/0"
    connections: list[BlockingConnection] = []
    outcomes: list[str] = []
    try:
        for epoch in epochs:
            connection = BlockingConnection(
                f"amqp://127.0.0.1:{port}", allowed_mechs="ANONYMOUS", timeout=10
            )
            connections.append(connection)
            try:
                connection.create_receiver(
                    address, options=_Epoch(epoch) if epoch is not None else None
                )
                outcomes.append("attached")
            except LinkDetached as exc:
                outcomes.append(str(exc.condition))
    finally:
        for connection in connections:
            with contextlib.suppress(Exception):  # a stolen link re-raises on close
                connection.close()
    return outcomes


async def test_receiver_limits_and_epoch_refusals(hub: DevHub) -> None:
    """Five receivers without epoch may share a partition; an epoch receiver takes it over;
    then receivers without epoch or with a lower epoch are refused, an equal one steals."""
    outcomes = await asyncio.to_thread(attach_outcomes, hub.port, [None] * 6 + [3, None, 2, 3])
    assert outcomes == ["attached"] * 5 + [
        "amqp:resource-limit-exceeded",
        "attached",
        "amqp:link:stolen",
        "amqp:link:stolen",
        "attached",
    ]


async def test_load_balancing_with_blob_checkpoints(hub: DevHub, azurite: Any) -> None:
    """Two processors with BlobCheckpointStore share the partitions; a takeover resumes at the
    checkpoint (offset, exclusive), so no event is lost or read twice after checkpointing."""
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
    from azure.storage.blob.aio import ContainerClient

    container = f"dh{uuid.uuid4().hex[:12]}"
    async with ContainerClient.from_connection_string(
        azurite.connection_string, container
    ) as blobs:
        await blobs.create_container()
    conn = hub.connection_string(HUB)
    seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}

    def handler(name: str) -> Callable[[Any, EventData | None], Any]:
        async def on_event(context: Any, event: EventData | None) -> None:
            if event is not None:
                seen[name].append((context.partition_id, event.sequence_number))
                await context.update_checkpoint(event)

        return on_event

    async with producer(hub) as client:
        await send_to_each(client, {p: ["old"] for p in "0123"})

    stores = [
        BlobCheckpointStore.from_connection_string(azurite.connection_string, container)
        for _ in range(2)
    ]
    clients = [
        EventHubConsumerClient.from_connection_string(
            conn,
            consumer_group="$Default",
            checkpoint_store=store,
            load_balancing_interval=LB_INTERVAL_S,
            partition_ownership_expiration_interval=10,
        )
        for store in stores
    ]
    tasks = [asyncio.create_task(clients[0].receive(handler("a"), starting_position="-1"))]
    try:
        for _ in range(200):
            if len(seen["a"]) >= 4:
                break
            await asyncio.sleep(0.05)
        assert sorted(seen["a"]) == [(p, 0) for p in "0123"]
        tasks.append(asyncio.create_task(clients[1].receive(handler("b"), starting_position="-1")))
        for _ in range(200):  # wait until the second processor owns two partitions
            owners = Counter(
                o["owner_id"]
                for o in await stores[0].list_ownership(f"127.0.0.1:{hub.port}", HUB, "$Default")
            )
            if sorted(owners.values()) == [2, 2]:
                break
            await asyncio.sleep(0.1)
        assert sorted(owners.values()) == [2, 2], owners
        await asyncio.sleep(2 * LB_INTERVAL_S)  # the new owner's receivers attach
        async with producer(hub) as client:
            await send_to_each(client, {p: ["new"] for p in "0123"})
        for _ in range(200):
            if len([x for x in seen["a"] + seen["b"] if x[1] == 1]) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
        await asyncio.gather(*tasks)
        await asyncio.gather(*(store.close() for store in stores))
    new_events = sorted(x for x in seen["a"] + seen["b"] if x[1] == 1)
    assert new_events == [(p, 1) for p in "0123"], seen
    assert [x for x in seen["b"] if x[1] == 0] == [], "the takeover re-read checkpointed events"
    assert {p for p, s in seen["b"] if s == 1}, "the second processor received nothing"


# --- persistence -----------------------------------------------------------------------------


def snapshot(received: Received) -> list[tuple[Any, ...]]:
    return sorted(
        (
            partition_id,
            e.sequence_number,
            e.offset,
            e.enqueued_time,
            e.partition_key,
            e.body_as_str(),
            tuple(sorted(e.properties.items())),
        )
        for partition_id, e in received
    )


async def fill(server: DevHub) -> None:
    async with producer(server) as client:
        batch = await client.create_batch(partition_id="0")
        for i in range(3):
            event = EventData(f"p0-{i}")
            event.properties = {"i": i}
            batch.add(event)
        await asyncio.gather(
            client.send_batch(batch),
            client.send_event(EventData("keyed"), partition_key="object-1"),
        )


async def test_data_dir_survives_a_restart(tmp_path: Path) -> None:
    """Events, sequence numbers, offsets and times come back; numbering continues."""
    data_dir = tmp_path / "hub"
    async with DevHub(port=0, hubs={HUB: 2}, data_dir=data_dir) as server:
        await fill(server)
        before = await collect(
            server.connection_string(HUB), count_reaches(4), starting_position="-1"
        )
    assert len(before) == 4
    async with DevHub(port=0, hubs={HUB: 2}, data_dir=data_dir) as server:
        async with producer(server) as client:
            await client.send_event(EventData("p0-new"), partition_id="0")
        after = await collect(
            server.connection_string(HUB), count_reaches(5), starting_position="-1"
        )
    new = [(p, e) for p, e in after if e.body_as_str() == "p0-new"]
    assert len(new) == 1
    assert snapshot([x for x in after if x not in new]) == snapshot(before)
    old_p0 = [e for p, e in before if p == "0"]
    assert new[0][1].sequence_number == len(old_p0)
    assert int(new[0][1].offset) > max(int(e.offset) for e in old_p0)


async def test_data_dir_partition_count_is_fixed(tmp_path: Path) -> None:
    """Reopening a data dir with another partition count is a clear configuration error."""
    async with DevHub(port=0, hubs={HUB: 2}, data_dir=tmp_path):
        pass
    with pytest.raises(ConfigError, match=r"has 2 partitions, but 3 were asked for"):
        await DevHub(port=0, hubs={HUB: 3}, data_dir=tmp_path).start()


# --- the entry point -------------------------------------------------------------------------


async def start_process(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.devhub",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    return process, line.decode().strip()


async def test_entry_point_prints_connection_string_and_stops_on_sigterm() -> None:
    """One stdout line (the first hub's connection string); SIGTERM exits 0."""
    process, line = await start_process("--hub", "first:2", "--hub", "second")
    try:
        assert line.startswith("Endpoint=sb://127.0.0.1:")
        assert line.endswith(";UseDevelopmentEmulator=true;EntityPath=first")
        async with producer(line) as client:
            assert (await client.get_eventhub_properties())["partition_ids"] == ["0", "1"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert process.stdout is not None
        assert await process.stdout.read() == b""  # nothing but the one line
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_accepted_events_survive_sigkill(tmp_path: Path) -> None:
    """What the server Accepted is on disk even when the server is killed without warning; a
    torn record at the end of a log (a write cut short) is dropped, and appends continue."""
    process, line = await start_process("--hub", f"{HUB}:2", "--data-dir", str(tmp_path))
    try:
        async with producer(line) as client:
            for i in range(5):
                await client.send_event(EventData(f"k{i}"), partition_id=str(i % 2))
    finally:
        process.kill()
        await process.wait()
    log_path = tmp_path / HUB / "0.log"
    with log_path.open("ab") as log_file:
        log_file.write(b"\x00\x00\x01\x00torn")  # the start of a record, never finished
    async with DevHub(port=0, hubs={HUB: 2}, data_dir=tmp_path) as server:
        async with producer(server) as client:
            await client.send_event(EventData("k5"), partition_id="0")
        received = await collect(
            server.connection_string(HUB), count_reaches(6), starting_position="-1"
        )
    assert sorted(bodies(received)) == [f"k{i}" for i in range(6)]
    reloaded = Partition(HUB, "0")
    reloaded.load(log_path)
    assert len(reloaded) == 4  # k0, k2, k4 and k5: the torn bytes are gone from the file


# --- throughput --------------------------------------------------------------------------------


def sync_round_trip(conn: str, total: int) -> list[tuple[int, str]]:
    """Send `total` events in batches and read them back with the *sync* SDK clients."""
    with SyncProducerClient.from_connection_string(conn) as client:
        sent = 0
        while sent < total:
            batch = client.create_batch(partition_id="2")
            while sent < total:
                try:
                    batch.add(EventData(f"{sent:05d}"))
                except ValueError:
                    break
                sent += 1
            client.send_batch(batch)
    received: list[tuple[int, str]] = []
    done = threading.Event()

    def on_event(context: Any, event: EventData | None) -> None:
        if event is not None:
            received.append((event.sequence_number, event.body_as_str()))
            if len(received) >= total:
                done.set()

    consumer = SyncConsumerClient.from_connection_string(
        conn, consumer_group="$Default", load_balancing_interval=LB_INTERVAL_S
    )
    thread = threading.Thread(
        target=consumer.receive,
        kwargs={"on_event": on_event, "partition_id": "2", "starting_position": "-1"},
    )
    thread.start()
    try:
        done.wait(30)
    finally:
        consumer.close()
        thread.join()
    return received


async def test_throughput_smoke(hub: DevHub) -> None:
    """5,000 events in batches come back complete and in order (sync clients this time)."""
    total = 5000
    received = await asyncio.to_thread(sync_round_trip, hub.connection_string(HUB), total)
    assert [body for _, body in received] == [f"{i:05d}" for i in range(total)]
    assert [number for number, _ in received] == list(range(total))
