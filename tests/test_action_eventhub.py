"""The `eventhub` action against dev-hub, read back with the real consumer client."""

from __future__ import annotations

import asyncio
import json

import pytest
from azure.eventhub.aio import EventHubConsumerClient

from tests.conftest import DevHubProcess, eg
from tests.test_delivery import planned_actions
from worker.actions.eventhub import IDEMPOTENCY_PROPERTY, EventHubExecutor
from worker.errors import ActionError
from worker.settings import Settings
from worker.templates import reveal


@pytest.fixture
def hub(tmp_path):
    server = DevHubProcess(tmp_path / "hub", hubs=("aml-events:4", "forward:2"))
    server.start()
    yield server
    server.stop()


async def read_all(connection_string: str, expected: int) -> list:
    received = []
    done = asyncio.Event()

    async def on_event(context, event):
        received.append(event)
        if len(received) >= expected:
            done.set()

    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group="$Default"
    )
    async with client:
        task = asyncio.ensure_future(client.receive(on_event, starting_position="-1"))
        await asyncio.wait_for(done.wait(), 20)
        await client.close()
        task.cancel()
    return received


async def test_forwards_the_event_as_received_keyed_by_subject(hub):
    env = {"FWD": hub.hub_connection_string("forward")}
    action = "{type: eventhub, connection_string: '${FWD}', properties: {rule: '{{ rule }}'}}"
    planned = planned_actions(action, eg("a", subject="models/m:1"), eg("b", subject="models/m:1"))
    executor = EventHubExecutor(Settings())
    try:
        for p in planned:
            facts = await executor.execute(p, reveal(p.params, env))
            assert facts == {"eventhub": "forward", "partition_key": "models/m:1"}
    finally:
        await executor.aclose()
    received = await read_all(env["FWD"], 2)
    assert [json.loads(e.body_as_str()) for e in received] == [p.event.raw for p in planned]
    assert {e.partition_key for e in received} == {b"models/m:1"}
    properties = [{k.decode(): v for k, v in e.properties.items()} for e in received]
    assert [p[IDEMPOTENCY_PROPERTY] for p in properties] == [
        p.key.encode() if isinstance(properties[0][IDEMPOTENCY_PROPERTY], bytes) else p.key
        for p in planned
    ]
    assert all(p["rule"] in ("r", b"r") for p in properties)


async def test_templated_body_and_partition_key(hub):
    env = {"FWD": hub.hub_connection_string("forward")}
    action = (
        "{type: eventhub, connection_string: '${FWD}', partition_key: 'fixed', "
        "body: {id: '{{ event.id }}', status: '{{ data.runStatus }}'}}"
    )
    (planned,) = planned_actions(action, eg("a", data={"runStatus": "Failed"}))
    executor = EventHubExecutor(Settings())
    try:
        await executor.execute(planned, reveal(planned.params, env))
    finally:
        await executor.aclose()
    (event,) = await read_all(env["FWD"], 1)
    assert json.loads(event.body_as_str()) == {"id": "a", "status": "Failed"}
    assert event.partition_key == b"fixed"


async def test_bad_target_is_permanent_and_never_echoed():
    action = "{type: eventhub, connection_string: '${FWD}'}"
    (planned,) = planned_actions(action, eg("a"))
    executor = EventHubExecutor(Settings())
    try:
        with pytest.raises(ActionError) as info:
            await executor.execute(planned, {"connection_string": "not a connection string"})
        assert not info.value.retryable and "not a connection string" not in str(info.value)
    finally:
        await executor.aclose()


async def test_lone_surrogates_are_forwarded_not_crashed(hub):
    """A lone surrogate in the subject and data (DESIGN §7): the event as received keeps it
    as a JSON escape; the partition key and properties (AMQP strings, at any depth) carry
    U+FFFD. The message is sent instead of raising UnicodeEncodeError."""
    env = {"FWD": hub.hub_connection_string("forward")}
    event = eg("a", subject="models/m\udc80", data={"x": "a\udc80b"})
    as_received = "{type: eventhub, connection_string: '${FWD}', properties: {note: '{{ data.x }}', deep: {list: ['{{ data.x }}']}}}"  # noqa: E501
    templated = "{type: eventhub, connection_string: '${FWD}', partition_key: 'k{{ data.x }}', body: {x: '{{ data.x }}'}}"  # noqa: E501
    planned = planned_actions(as_received, event) + planned_actions(templated, event)
    executor = EventHubExecutor(Settings())
    try:
        facts = [await executor.execute(p, reveal(p.params, env)) for p in planned]
    finally:
        await executor.aclose()
    assert [f["partition_key"] for f in facts] == ["models/m\ufffd", "ka\ufffdb"]
    received = sorted(await read_all(env["FWD"], 2), key=lambda e: e.partition_key)
    first, second = received
    assert first.partition_key == "ka\ufffdb".encode()
    assert json.loads(first.body_as_str()) == {"x": "a\udc80b"}
    assert second.partition_key == "models/m\ufffd".encode()
    assert json.loads(second.body_as_str())["subject"] == "models/m\udc80"
    properties = {k.decode(): v for k, v in second.properties.items()}
    assert properties["note"] in ("a\ufffdb", "a\ufffdb".encode())
    deep = properties["deep"]
    assert {(k.decode() if isinstance(k, bytes) else k) for k in deep} == {"list"}
