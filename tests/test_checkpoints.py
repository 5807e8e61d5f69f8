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


async def test_a_message_s_dead_letters_are_one_blob_read_back_as_records(store):
    """Batch blobs (a JSON array, one write per message) and single-record blobs written
    before batching are both listed, one record per dead letter."""
    await store.dead_letter("0", "3-body", {"reason": "old layout", "n": 0})
    batch = [{"reason": f"element {i}", "n": i} for i in range(2000)]
    blob = await store.dead_letters("0", "4-0-batch-abc", batch)
    await store.dead_letters("0", "4-0-batch-abc", batch)  # processed again: overwritten
    names = [b.name async for b in store.container.list_blobs()]
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["3-body.json", "4-0-batch-abc.json"]
    records = await store.list_dead_letters()
    assert len(records) == 2001
    old = next(r for r in records if r["blob"].endswith("3-body.json"))
    assert old["n"] == 0 and "item" not in old
    listed = [r for r in records if r["blob"] == blob]
    assert [(r["item"], r["n"]) for r in listed] == [(i, i) for i in range(2000)]


async def test_one_record_of_a_batch_blob_is_updated_in_place(store):
    blob = await store.dead_letters("1", "9-batch-x", [{"n": 0}, {"n": 1}, {"n": 2}])
    record = next(r for r in await store.list_dead_letters() if r.get("item") == 1)
    await store.update_dead_letter(blob, {**record, "redriven_at": 5})
    records = sorted(await store.list_dead_letters(), key=lambda r: r["item"])
    assert [(r["n"], r.get("redriven_at")) for r in records] == [(0, None), (1, 5), (2, None)]
    single = await store.dead_letter("1", "10-body", {"n": 9})
    await store.update_dead_letter(single, {"blob": single, "n": 9, "redriven_at": 6})
    (updated,) = [r for r in await store.list_dead_letters() if r["blob"] == single]
    assert updated == {"blob": single, "n": 9, "redriven_at": 6}


async def test_any_dead_letter_can_be_written(store):
    """A lone surrogate is kept as its JSON escape; a value nested too deeply for readers
    is kept as JSON text; a record JSON cannot encode at all (a cycle) keeps its kind,
    reason and coordinates instead of failing every retry."""
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    cyclic: list = []
    cyclic.append(cyclic)
    await store.dead_letters(
        "2",
        "5-batch-y",
        [
            {"kind": "invalid_body", "subject": "runs/\udc80", "source": {"offset": "1"}},
            {"kind": "invalid_body", "reason": "deep", "source": {"offset": "2"}, "x": nested},
            {"kind": "render_error", "reason": "cycle", "source": {"offset": "3"}, "x": cyclic},
        ],
    )
    first, second, third = sorted(await store.list_dead_letters(), key=lambda r: r["item"])
    assert first["subject"] == "runs/\udc80"
    assert second["reason"] == "deep" and "x" not in second
    assert second["x_json"] == "[" * 5001 + "]" * 5001
    assert third["kind"] == "render_error" and third["source"] == {"offset": "3"}
    assert third["reason"].startswith("cycle (record not encodable as JSON: ValueError")
    assert "x" not in third and "[...]" in third["record_repr"]
