"""Event Hubs Capture files as a source: real Avro files, on disk and in Azurite.

The files are written with fastavro in the documented Capture schema and default layout
(`{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}.avro`),
for three partitions with several windows each, idle windows included (both a header-only
Avro file and a 0-byte blob).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
import structlog

from tests.conftest import AZURITE_KEY, TOPIC, eg
from worker.capture import parse_enqueued_time, read_capture
from worker.errors import SourceError
from worker.events import Origin
from worker.pipeline import PartitionPipeline
from worker.positions import Position, PositionKind, parse_positions
from worker.rules import parse_rules

# The schema `avro-tools getschema` prints for a Capture file (explore-captured-avro-files).
_VALUES = ["long", "double", "string", "bytes"]
CAPTURE_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "EventData",
        "namespace": "Microsoft.ServiceBus.Messaging",
        "fields": [
            {"name": "SequenceNumber", "type": "long"},
            {"name": "Offset", "type": "string"},
            {"name": "EnqueuedTimeUtc", "type": "string"},
            {"name": "SystemProperties", "type": {"type": "map", "values": _VALUES}},
            {"name": "Properties", "type": {"type": "map", "values": _VALUES}},
            {"name": "Body", "type": ["null", "bytes"]},
        ],
    }
)

BASE = datetime(2024, 6, 10, 11, 58, tzinfo=UTC)  # windows cross noon: AM and PM times
WINDOW = timedelta(minutes=5)
# Per partition, per window: a record count, "empty" (header only) or "zero" (0 bytes).
WINDOWS: dict[str, list[int | str]] = {
    "0": [3, "empty", "zero", 2],
    "2": [2, 2, "empty", 1],
    "10": ["empty", 3, 1, "empty"],
}
NULL_BODY = ("2", 4)  # (partition, sequence number) written with Body null
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Written:
    partition_id: str
    sequence_number: int
    offset: str
    enqueued_time: datetime  # as the reader should report it
    delivery_count: int | None
    body: bytes

    def origin(self) -> Origin:
        return Origin(
            partition_id=self.partition_id,
            offset=self.offset,
            sequence_number=self.sequence_number,
            enqueued_time=self.enqueued_time,
            delivery_count=self.delivery_count,
        )


def dotnet(moment: datetime) -> str:
    """.NET's invariant `M/d/yyyy h:mm:ss tt`, as Capture writes EnqueuedTimeUtc."""
    hour = moment.hour % 12 or 12
    half = "PM" if moment.hour >= 12 else "AM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {half}"


def iso_ms(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def capture_path(root: Path, partition_id: str, window_start: datetime, hub: str = "aml") -> Path:
    return root / "ns" / hub / partition_id / window_start.strftime("%Y/%m/%d/%H/%M/%S.avro")


def write_avro(path: Path, records: list[dict[str, Any]], codec: str = "null") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        fastavro.writer(handle, CAPTURE_SCHEMA, records, codec=codec)


def capture_record(
    partition_id: str, seq: int, enqueued: datetime, body: bytes | None
) -> tuple[dict[str, Any], Written]:
    """One EventData record, its enqueued time in one of the forms Capture files carry."""
    offset = str(4096 + 512 * seq)
    system: dict[str, Any] = {"x-opt-sequence-number": seq, "x-opt-offset": offset}
    properties: dict[str, Any] = {}
    kind = seq % 3
    if kind == 0:  # precise time in SystemProperties: epoch ms (or a string in partition 10)
        system["x-opt-enqueued-time"] = (
            iso_ms(enqueued) if partition_id == "10" else (epoch_ms(enqueued))
        )
        enqueued_utc, expected = dotnet(enqueued), enqueued
    elif kind == 1:  # only the .NET form: whole seconds
        enqueued_utc, expected = dotnet(enqueued), enqueued.replace(microsecond=0)
    else:  # ISO 8601, as other Azure Avro exports write it
        enqueued_utc, expected = iso_ms(enqueued), enqueued
    delivery_count = None
    if seq % 2 == 0:
        delivery_count = 2 if partition_id == "10" else 1
        properties["aeg-delivery-count"] = 2 if partition_id == "10" else "1"
    record = {
        "SequenceNumber": seq,
        "Offset": offset,
        "EnqueuedTimeUtc": enqueued_utc,
        "SystemProperties": system,
        "Properties": properties,
        "Body": body,
    }
    written = Written(partition_id, seq, offset, expected, delivery_count, body or b"")
    return record, written


def write_capture(root: Path) -> list[Written]:
    """The capture tree of WINDOWS; returns what was written, in (partition, seq) order."""
    written: list[Written] = []
    for partition_id, windows in WINDOWS.items():
        seq = 0
        for index, spec in enumerate(windows):
            window_start = BASE + index * WINDOW
            path = capture_path(root, partition_id, window_start)
            if spec == "zero":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
                continue
            records = []
            for k in range(0 if spec == "empty" else int(spec)):
                enqueued = window_start + timedelta(
                    seconds=40 * (k + 1), milliseconds=7 * seq + 3 + 100 * int(partition_id)
                )
                event = eg(
                    f"p{partition_id}-s{seq}",
                    subject=f"experiments/x/runs/r{partition_id}-{seq}",
                    time=iso_ms(enqueued - timedelta(seconds=1)),
                    data={"runStatus": "Completed"},
                )
                body = None if (partition_id, seq) == NULL_BODY else json.dumps(event).encode()
                record, item = capture_record(partition_id, seq, enqueued, body)
                records.append(record)
                written.append(item)
                seq += 1
            write_avro(path, records, codec="deflate" if index % 2 else "null")
    return written


async def collect(messages: AsyncIterator[tuple[bytes, Origin]]) -> list[tuple[bytes, Origin]]:
    return [item async for item in messages]


def expected(items: list[Written]) -> list[tuple[bytes, Origin]]:
    return [(w.body, w.origin()) for w in items]


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, list[Written]]:
    root = tmp_path / "capture"
    return root, write_capture(root)


# --- local folder ---------------------------------------------------------------------------


async def test_a_local_folder_yields_every_record_by_partition_then_sequence_number(capture):
    """Numeric partition order (2 before 10), full origins, null Body as b"", idle files."""
    root, written = capture
    got = await collect(read_capture(str(root)))
    assert got == expected(written)
    assert [o.partition_id for _, o in got] == ["0"] * 5 + ["2"] * 5 + ["10"] * 4
    assert dict.fromkeys(o.partition_id for _, o in got) == {"0": None, "2": None, "10": None}
    null = [body for body, o in got if (o.partition_id, o.sequence_number) == NULL_BODY]
    assert null == [b""]
    assert all(o.enqueued_time.tzinfo is UTC for _, o in got)
    assert {o.delivery_count for _, o in got} == {None, 1, 2}


async def test_enqueued_times_come_from_x_opt_enqueued_time_dotnet_and_iso(capture):
    """ms-precise from SystemProperties (long or string) and ISO; whole seconds from .NET."""
    root, _ = capture
    origins = [o for _, o in await collect(read_capture(str(root)))]
    got = {(o.partition_id, o.sequence_number): o.enqueued_time for o in origins}
    # partition 0 seq 0: x-opt-enqueued-time epoch ms, window 11:58:00, +40 s, +3 ms
    assert got[("0", 0)] == datetime(2024, 6, 10, 11, 58, 40, 3000, tzinfo=UTC)
    # seq 1: only "6/10/2024 11:59:20 AM"
    assert got[("0", 1)] == datetime(2024, 6, 10, 11, 59, 20, tzinfo=UTC)
    # seq 2: ISO with milliseconds
    assert got[("0", 2)] == datetime(2024, 6, 10, 12, 0, 0, 17000, tzinfo=UTC)
    # partition 10 seq 0: x-opt-enqueued-time as an ISO string; window 12:03, +1 s for "10"
    assert got[("10", 0)] == datetime(2024, 6, 10, 12, 3, 41, 3000, tzinfo=UTC)
    # partition 2 seq 4 (window 12:13, .NET "6/10/2024 12:13:40 PM"): noon is 12 PM
    assert got[("2", 4)] == datetime(2024, 6, 10, 12, 13, 40, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("12/2/2021 2:58:24 PM", datetime(2021, 12, 2, 14, 58, 24, tzinfo=UTC)),
        ("1/1/2024 12:00:01 AM", datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)),
        ("6/10/2024 12:30:00 PM", datetime(2024, 6, 10, 12, 30, tzinfo=UTC)),
        ("6/10/2024 23:30:00", datetime(2024, 6, 10, 23, 30, tzinfo=UTC)),
        ("2021-12-02T14:58:24.1234567Z", datetime(2021, 12, 2, 14, 58, 24, 123456, tzinfo=UTC)),
        ("2021-12-02T15:58:24+01:00", datetime(2021, 12, 2, 14, 58, 24, tzinfo=UTC)),
        ("1718020800123", datetime(2024, 6, 10, 12, 0, 0, 123000, tzinfo=UTC)),
        ("13/2/2021 2:58:24 PM", None),
        ("2/2/2021 13:58:24 PM", None),
        ("yesterday", None),
    ],
)
def test_parse_enqueued_time_reads_dotnet_iso_and_epoch_ms(text, moment):
    """The .NET invariant form Capture writes, ISO 8601, epoch ms; None for anything else."""
    assert parse_enqueued_time(text) == moment


async def test_time_start_and_until_are_inclusive_on_enqueued_time(capture):
    """`time:` keeps records enqueued within [start, until], both ends included."""
    root, written = capture
    times = sorted(w.enqueued_time for w in written)
    start, until = times[3], times[-4]
    got = await collect(
        read_capture(
            str(root),
            start=parse_positions(f"time:{iso_ms(start)}"),
            until=parse_positions(f"time:{iso_ms(until)}"),
        )
    )
    keep = [w for w in written if start <= w.enqueued_time <= until]
    assert got == expected(keep)
    assert {o.enqueued_time for _, o in got} >= {start, until}
    assert 0 < len(keep) < len(written)


async def test_time_positions_skip_whole_files_beyond_one_window_margin(capture):
    """A file is skipped unread when its window start is more than 16 min outside the range.

    Corrupt files sit at windows 2 h before and 3 h after the data: reading them would raise.
    """
    root, written = capture
    early, late = BASE - timedelta(hours=2), BASE + timedelta(hours=3)
    for moment in (early, late):
        path = capture_path(root, "0", moment)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not avro at all")
    margin, second = timedelta(minutes=16), timedelta(seconds=1)

    def window(start: datetime, until: datetime) -> Any:
        return read_capture(
            str(root),
            start=Position(PositionKind.TIME, start),
            until=Position(PositionKind.TIME, until),
        )

    assert await collect(window(early + margin + second, late - margin - second)) == expected(
        written
    )
    with pytest.raises(SourceError, match=re.escape(f"/0/{early:%Y/%m/%d/%H/%M/%S}.avro")):
        await collect(window(early + margin, BASE + timedelta(hours=1)))
    with pytest.raises(SourceError, match=re.escape(f"/0/{late:%Y/%m/%d/%H/%M/%S}.avro")):
        await collect(window(BASE, late - margin))
    with pytest.raises(SourceError, match="not a readable Avro file"):
        await collect(read_capture(str(root)))


async def test_seq_positions_per_partition_with_unnamed_partitions_unbounded(capture):
    """`0=seq:2,10=seq:2` starts those two; `--until 2=seq:2` ends only partition 2."""
    root, written = capture
    got = await collect(
        read_capture(
            str(root), start=parse_positions("0=seq:2,10=seq:2"), until=parse_positions("2=seq:2")
        )
    )
    keep = [
        w
        for w in written
        if (w.partition_id == "0" and w.sequence_number >= 2)
        or (w.partition_id == "2" and w.sequence_number <= 2)
        or (w.partition_id == "10" and w.sequence_number >= 2)
    ]
    assert got == expected(keep)
    assert [o.sequence_number for _, o in got if o.partition_id == "2"] == [0, 1, 2]


async def test_offset_positions_are_inclusive(capture):
    """`offset:X` to `offset:Y` keeps the records at X and Y and those between."""
    root, written = capture
    start, until = parse_positions("offset:4608"), parse_positions("offset:5632")
    got = await collect(read_capture(str(root), start=start, until=until))
    assert got == expected([w for w in written if 1 <= w.sequence_number <= 3])


async def test_latest_start_is_the_last_record_and_earliest_until_is_nothing(capture):
    """`latest` reads each partition's last record (as replay --source eventhub does)."""
    root, written = capture
    got = await collect(read_capture(str(root), start=Position(PositionKind.LATEST)))
    last = {w.partition_id: w for w in written}
    assert got == expected([last["0"], last["2"], last["10"]])
    until = Position(PositionKind.EARLIEST)
    assert await collect(read_capture(str(root), until=until)) == []


async def test_partition_filter_keeps_only_the_named_partitions(capture):
    """`partitions={"2", "10"}`: partition 0 is never read."""
    root, written = capture
    (capture_path(root, "0", BASE)).write_bytes(b"broken")  # proves partition 0 is unread
    got = await collect(read_capture(str(root), partitions={"10", "2"}))
    assert got == expected([w for w in written if w.partition_id in ("2", "10")])


async def test_idle_partitions_of_only_empty_files_yield_nothing(tmp_path):
    """0-byte files and Avro files with a header and no records are idle windows, not errors."""
    write_avro(capture_path(tmp_path, "0", BASE), [])
    path = capture_path(tmp_path, "1", BASE)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert await collect(read_capture(str(tmp_path))) == []


async def test_a_missing_location_is_a_source_error(tmp_path):
    """A local location that does not exist says so."""
    with pytest.raises(SourceError, match="not found"):
        await collect(read_capture(str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Obj\x01 definitely not avro", "not a readable Avro file"),
        (b"{}", "not a readable Avro file"),
        ("other-schema", "not an Event Hubs Capture file"),
    ],
)
async def test_a_bad_file_is_a_source_error_naming_it(capture, content, message):
    """Not Avro, or Avro of another schema: SourceError with the file's path."""
    root, _ = capture
    path = capture_path(root, "2", BASE + 2 * WINDOW)
    if content == "other-schema":
        schema = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
        with path.open("wb") as handle:
            fastavro.writer(handle, fastavro.parse_schema(schema), [{"x": 1}])
    else:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as info:
        await collect(read_capture(str(root)))
    assert str(path.as_posix()) in str(info.value)
    assert info.value.retryable is False


async def test_files_outside_the_layout_or_of_several_hubs_are_refused(capture):
    """Partitions are only read from the layout's {PartitionId}; hubs are never mixed."""
    root, _ = capture
    stray = root / "ns" / "aml" / "0" / "notes.avro"
    write_avro(stray, [])
    with pytest.raises(SourceError, match=r"notes\.avro: not named like a Capture file"):
        await collect(read_capture(str(root)))
    stray.unlink()
    write_avro(capture_path(root, "0", BASE, hub="other"), [])
    with pytest.raises(SourceError, match="several event hubs"):
        await collect(read_capture(str(root)))
    # Pointing at one hub's folder reads it.
    assert len(await collect(read_capture(str(root / "ns" / "aml")))) == 14


async def test_a_custom_layout_gives_the_partition_from_its_token(tmp_path):
    """A custom archive name format, passed as `layout=`, places {PartitionId} anywhere."""
    layout = "{Year}-{Month}-{Day}/{Namespace}/{EventHub}/p{PartitionId}/{Hour}{Minute}{Second}"
    record, item = capture_record("7", 0, BASE + timedelta(seconds=40), b"{}")
    write_avro(tmp_path / "2024-06-10" / "ns" / "aml" / "p7" / "115800.avro", [record])
    got = await collect(read_capture(str(tmp_path), layout=layout))
    assert got == [(b"{}", item.origin())]
    with pytest.raises(SourceError, match="not named like a Capture file"):
        await collect(read_capture(str(tmp_path)))


async def test_overlapping_windows_yield_each_sequence_number_once(tmp_path):
    """A window re-captured after a restart repeats records: each is yielded once, logged."""
    first = [capture_record("0", s, BASE + timedelta(seconds=s), b"%d" % s) for s in range(5)]
    again = [capture_record("0", s, BASE + timedelta(seconds=s), b"%d" % s) for s in range(3, 8)]
    write_avro(capture_path(tmp_path, "0", BASE), [r for r, _ in first])
    write_avro(capture_path(tmp_path, "0", BASE + WINDOW), [r for r, _ in reversed(again)])
    with structlog.testing.capture_logs() as logs:
        got = await collect(read_capture(str(tmp_path)))
    assert [o.sequence_number for _, o in got] == list(range(8))
    assert [body for body, _ in got] == [b"%d" % s for s in range(8)]
    skipped = [entry for entry in logs if entry["event"] == "capture_records_skipped"]
    assert [(e["count"], e["partition_id"]) for e in skipped] == [(2, "0")]
    assert skipped[0]["file"].endswith("12/03/00.avro")


# --- the same pipeline ----------------------------------------------------------------------

RULES = f"""\
version: 1
topics: ['{TOPIC}']
rules:
  - name: all
    actions:
      - type: log
        id: log
        message: "{{{{ event.id }}}}"
"""


async def test_capture_bodies_run_through_the_partition_pipeline(capture):
    """One PartitionPipeline per partition consumes the bodies as it does Event Hubs ones."""
    root, written = capture
    ruleset = parse_rules(RULES, "rules.yaml", secrets="ignore")
    pipelines: dict[str, PartitionPipeline] = {}
    planned: list[str] = []
    async for body, origin in read_capture(str(root)):
        pipeline = pipelines.setdefault(origin.partition_id, PartitionPipeline(ruleset))
        planned += [a.event.id for a in pipeline.feed(body, origin).actions]
    for pipeline in pipelines.values():
        planned += [a.event.id for a in pipeline.finish().actions]
    events = [w for w in written if w.body]
    assert list(pipelines) == ["0", "2", "10"]
    assert sum(p.summary.messages for p in pipelines.values()) == len(written)
    assert sum(p.summary.events for p in pipelines.values()) == len(events) == 13
    assert sum(p.summary.invalid for p in pipelines.values()) == 1  # the null Body
    assert sum(p.summary.matched for p in pipelines.values()) == len(events)
    assert sorted(planned) == sorted(json.loads(w.body)["id"] for w in events)


# --- Azurite --------------------------------------------------------------------------------


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*.avro"))


async def upload(connection_string: str, root: Path, prefix: str) -> str:
    """Upload a capture tree under `prefix` to a new container; return the container name."""
    from azure.storage.blob.aio import BlobServiceClient

    files = {path.relative_to(root).as_posix(): path.read_bytes() for path in tree(root)}
    name = f"capture-{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(connection_string) as service:
        container = await service.create_container(name)
        for relative, data in files.items():
            await container.upload_blob(f"{prefix}/{relative}", data)
        # Beside the prefix, not under it: must never be read.
        await container.upload_blob(f"{prefix}-old/ns/aml/0/2024/06/10/11/58/00.avro", b"not avro")
    return name


async def test_azurite_container_url_with_prefix_and_connection_string(azurite, capture):
    """A container URL + folder prefix, authorised by the checkpoint store's connection string."""
    root, written = capture
    container = await upload(azurite.connection_string, root, "archive")
    base = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/{container}"
    got = await collect(
        read_capture(f"{base}/archive", connection_string=azurite.connection_string)
    )
    assert got == expected(written)
    narrowed = await collect(
        read_capture(
            f"{base}/archive/ns/aml",
            connection_string=azurite.connection_string,
            start=parse_positions("seq:1"),
            until=parse_positions("seq:2"),
            partitions={"0", "10"},
        )
    )
    keep = [w for w in written if w.partition_id != "2" and 1 <= w.sequence_number <= 2]
    assert narrowed == expected(keep)
    with pytest.raises(SourceError, match=f"{container}/archive-old/ns/aml/0/2024/06/10"):
        await collect(read_capture(base, connection_string=azurite.connection_string))


async def test_azurite_sas_url_and_explicit_credential(azurite, capture):
    """A SAS in the URL needs nothing else; without one, `credential=` is used."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    root, written = capture
    container = await upload(azurite.connection_string, root, "archive")
    base = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/{container}"
    sas = generate_container_sas(
        "devstoreaccount1",
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    assert await collect(read_capture(f"{base}/archive?{sas}")) == expected(written)
    key = {"account_name": "devstoreaccount1", "account_key": AZURITE_KEY}
    assert await collect(read_capture(f"{base}/archive/", credential=key)) == expected(written)


async def test_azurite_missing_container_is_a_source_error_without_the_sas(azurite):
    """Storage errors become SourceError; the message never carries the SAS signature."""
    base = f"http://127.0.0.1:{azurite.port}/devstoreaccount1/no-such-container"
    with pytest.raises(SourceError, match="no-such-container") as info:
        await collect(read_capture(f"{base}/x?sv=2021-08-06&sp=rl&sig=c2VjcmV0"))
    assert "sig=" not in str(info.value) and "c2VjcmV0" not in str(info.value)
    with pytest.raises(SourceError, match="with the connection string"):
        await collect(read_capture(base, connection_string=azurite.connection_string))


# --- through the CLI -----------------------------------------------------------------------


def test_replay_source_capture_writes_the_plan_partition_by_partition(capture, tmp_path):
    """`replay --source capture:DIR --dry-run`: same pipeline, same plan format."""
    from tests.conftest import TOPIC
    from worker.cli import main

    root, written = capture
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n"
        "  - name: r\n    actions: [{type: log, message: '{{ event.id }}'}]\n"
    )
    plan = tmp_path / "plan.jsonl"
    summary = tmp_path / "summary.json"
    code = main(
        ["replay", "--rules", str(rules), "--source", f"capture:{root}", "--dry-run",
         "--output", str(plan), "--summary-json", str(summary)]
    )  # fmt: skip
    assert code == 0
    counts = json.loads(summary.read_text())
    with_body = [w for w in written if w.body]
    assert counts["messages"] == len(written) and counts["invalid"] == len(written) - len(with_body)
    lines = [json.loads(line) for line in plan.read_text().splitlines()]
    assert len(lines) == len(with_body) == counts["planned"]
    order = [
        (int(line["source"]["partition_id"]), line["source"]["sequence_number"]) for line in lines
    ]
    assert order == sorted(order)
    again = tmp_path / "again.jsonl"
    main(["replay", "--rules", str(rules), "--source", f"capture:{root}", "--dry-run",
          "--output", str(again)])  # fmt: skip
    assert again.read_bytes() == plan.read_bytes()


def test_replay_from_capture_runs_actions_with_the_live_keys(capture, tmp_path, env):
    """Without --dry-run the actions run, keyed as the live worker would key them."""
    import subprocess
    import sys

    from tests.conftest import TOPIC
    from tests.test_run_actions import WebhookPeer
    from worker.plan import idempotency_key

    root, written = capture
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"version: 1\ntopics: ['{TOPIC}']\nrules:\n"
        "  - name: r\n    actions: [{type: webhook, id: h, url: '${HOOK_URL}'}]\n"
    )
    with WebhookPeer() as peer:
        env.env["HOOK_URL"] = f"http://127.0.0.1:{peer.port}/hook"
        result = subprocess.run(
            [sys.executable, "-m", "worker", "replay", "--rules", str(rules),
             "--source", f"capture:{root}", "--dead-letter", str(tmp_path / "dead.jsonl")],
            env=env.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        ids = [json.loads(w.body)["id"] for w in written if w.body]
        assert set(peer.keys()) == {idempotency_key(TOPIC, i, "r", "h") for i in ids}
        assert "actions_dispatched=" in result.stderr
