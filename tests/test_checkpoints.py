"""State, checkpoints and dead letters in blob storage, against Azurite (DESIGN §4, §5)."""

from __future__ import annotations

import uuid

import pytest
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from worker.checkpoints import BlobPartitionStore, StateFenced
from worker.state import Mark


@pytest.fixture
async def store(azurite):
    name = f"t{uuid.uuid4().hex[:12]}"
    container = ContainerClient.from_connection_string(azurite.connection_string, name)
    await container.create_container()
    sdk = BlobCheckpointStore.from_connection_string(azurite.connection_string, name)
    yield BlobPartitionStore(
        container,
        sdk,
        fully_qualified_namespace="NS.servicebus.windows.net",
        eventhub_name="AML-Events",
        consumer_group="$Default",
    )
    await sdk.close()
    await container.delete_container()
    await container.close()


async def test_state_is_a_snapshot_plus_deltas_in_one_blob(store):
    handle = await store.load_state("0")
    assert handle.records == [] and store.needs_snapshot(handle)
    await store.save_state(handle, {"kind": "snapshot", "n": 0}, snapshot=True)
    await store.save_state(handle, {"kind": "delta", "n": 1}, snapshot=False)
    await store.save_state(handle, {"kind": "delta", "n": 2}, snapshot=False)
    loaded = await store.load_state("0")
    assert [r["n"] for r in loaded.records] == [0, 1, 2]
    assert len(loaded.blocks) == 3 and loaded.etag == handle.etag
    await store.save_state(loaded, {"kind": "snapshot", "n": 3}, snapshot=True)
    assert [r["n"] for r in (await store.load_state("0")).records] == [3]
    names = [b.name async for b in store.container.list_blobs()]
    assert names == ["ns.servicebus.windows.net/aml-events/$default/state/0"]


async def test_a_new_owner_fences_out_the_old_one(store):
    old = await store.load_state("1")
    await store.save_state(old, {"kind": "snapshot", "owner": "a"}, snapshot=True)
    new = await store.load_state("1")
    await store.save_state(new, {"kind": "snapshot", "owner": "b"}, snapshot=True)
    with pytest.raises(StateFenced):
        await store.save_state(old, {"kind": "delta", "owner": "a"}, snapshot=False)
    assert (await store.load_state("1")).records[-1]["owner"] == "b"


async def test_two_first_saves_cannot_both_win(store):
    a = await store.load_state("2")
    b = await store.load_state("2")
    await store.save_state(a, {"kind": "snapshot"}, snapshot=True)
    with pytest.raises(StateFenced):
        await store.save_state(b, {"kind": "snapshot"}, snapshot=True)


async def test_checkpoints_use_the_sdk_layout(store):
    assert await store.get_checkpoint("0") is None
    await store.update_checkpoint("0", Mark(41, "8200"))
    assert await store.get_checkpoint("0") == Mark(41, "8200")
    blob = store.container.get_blob_client(
        "ns.servicebus.windows.net/aml-events/$default/checkpoint/0"
    )
    metadata = (await blob.get_blob_properties()).metadata
    assert metadata == {"offset": "8200", "sequencenumber": "41"}


async def test_dead_letters_are_named_by_coordinates(store):
    await store.dead_letter("3", "17-body", {"reason": "not JSON", "n": 1})
    await store.dead_letter("3", "17-body", {"reason": "not JSON", "n": 2})  # re-read: overwrite
    records = await store.list_dead_letters()
    assert [(r["blob"].rsplit("/", 2)[-2:], r["n"]) for r in records] == [
        (["3", "17-body.json"], 2)
    ]


async def test_reset_state_keeps_other_blobs(store):
    handle = await store.load_state("0")
    await store.save_state(handle, {"kind": "snapshot"}, snapshot=True)
    await store.dead_letter("0", "1-body", {"reason": "x"})
    await store.reset_state("0")
    assert (await store.load_state("0")).records == []
    assert len(await store.list_dead_letters()) == 1
