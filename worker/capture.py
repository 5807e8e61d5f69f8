"""Event Hubs Capture files (Avro) as an event source: `replay --source capture:PATH_OR_URL`.

Capture writes one Avro file per partition and window, named for the window's start:
`{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}.avro`
(UTC, zero-padded), each record an `EventData` (namespace `Microsoft.ServiceBus.Messaging`):
SequenceNumber long, Offset string, EnqueuedTimeUtc string, SystemProperties and Properties
map<long|double|string|bytes>, Body [null, bytes]. Idle windows give empty files.

`read_capture` yields `(body, Origin)` like `source.read_jsonl`, partition by partition
(numeric order when the ids are numbers) and by sequence number within each partition.

Partition detection: a file's path (a local path, or a blob name) must end with the
layout, `DEFAULT_LAYOUT` unless `layout=` names a custom one; the layout's `{PartitionId}`
token gives the partition and its six time tokens the window start. Anything may precede
the layout, so a location can point at the container, a namespace, a hub or a partition
folder. A file that does not fit the layout is an error, not a guess; so is a location
holding the captures of more than one event hub (their partitions would be mixed).

Overlap: within a partition, files are read in window-start order and records in sequence
number order, and a record is yielded only when its sequence number is above the last one
yielded for that partition. A record again in a later file (a window re-captured after a
restart) is skipped and counted in a `capture_records_skipped` log line; so, by the same
rule, is a record that a later-named file holds below what was already yielded.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from worker.errors import ConfigError, SourceError
from worker.events import Origin, parse_time
from worker.positions import Position, PositionKind, StartPositions

__all__ = ["DEFAULT_LAYOUT", "WINDOW_MARGIN", "parse_enqueued_time", "read_capture"]

log = structlog.get_logger(__name__)

DEFAULT_LAYOUT = (
    "{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}"
)

# Capture's time window is at most 15 minutes; one more minute covers the window name's
# truncation to seconds and clock differences. A file named W holds events enqueued within
# W +/- WINDOW_MARGIN, which is how `time:` positions skip whole files unread.
WINDOW_MARGIN = timedelta(minutes=16)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUIRED_FIELDS = ("SequenceNumber", "Offset", "EnqueuedTimeUtc", "Body")
_TOKENS = {
    "Namespace": r"(?P<namespace>[^/]+?)",
    "EventHub": r"(?P<eventhub>[^/]+?)",
    "PartitionId": r"(?P<partition>[^/]+?)",
    "Year": r"(?P<year>\d{4})",
    "Month": r"(?P<month>\d{2})",
    "Day": r"(?P<day>\d{2})",
    "Hour": r"(?P<hour>\d{2})",
    "Minute": r"(?P<minute>\d{2})",
    "Second": r"(?P<second>\d{2})",
}
# .NET's invariant `M/d/yyyy h:mm:ss tt` ("12/2/2021 2:58:24 PM"), 24-hour and fractions too.
_DOTNET_TIME = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:\s*([AaPp])[Mm])?\Z"
)


# --- public entry point ---------------------------------------------------------------------


async def read_capture(
    location: str,
    *,
    credential: Any = None,
    connection_string: str | None = None,
    start: Position | StartPositions | None = None,
    until: Position | StartPositions | None = None,
    partitions: set[str] | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> AsyncIterator[tuple[bytes, Origin]]:
    """Yield the message bodies of Capture files with their `Origin`, in (partition, seq) order.

    `location` is a local folder (searched recursively for `*.avro`) or one file, or a blob
    container URL with an optional folder prefix and SAS query
    (`https://acct.blob.core.windows.net/container/ns/hub?sv=...`, Azurite's
    path-style `http://HOST:PORT/devstoreaccount1/container/prefix`). Blob access: the SAS in the
    URL, else `connection_string` when it is for the URL's account (the checkpoint store's,
    as with Azurite), else `credential` (default: azure.identity's DefaultAzureCredential,
    created and closed here).

    `start` and `until` are inclusive, one position or per partition. A partition that a
    per-partition `start` does not name starts at `earliest`; one that a per-partition
    `until` does not name has no end. `latest` as `start` is the partition's last record
    (as `replay --source eventhub` reads it); `earliest` as `until` yields nothing.
    `partitions` keeps only those ids. A null Body yields `b""`. Raises `SourceError`
    naming the file for a file that is not a Capture file or does not fit the layout.

    This is an async generator: stop early with `aclose()` (or `contextlib.aclosing`) to
    close the blob client at once.
    """
    matcher = _layout_matcher(layout)
    if urlsplit(location).scheme.lower() in ("http", "https"):
        store: _Store = _BlobStore(location, credential, connection_string)
    else:
        store = _LocalStore(location)
    async with store:
        files = _classify(await store.list_avro(), matcher, layout, store.describe)
        for partition_id in _partition_order(files):
            if partitions is not None and partition_id not in partitions:
                continue
            reader = _PartitionReader(
                partition_id,
                files[partition_id],
                store,
                _position_for(start, partition_id, default=PositionKind.EARLIEST),
                _position_for(until, partition_id, default=PositionKind.LATEST),
            )
            async for item in reader:
                yield item


# --- files and layout -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CaptureFile:
    key: str  # what the store reads: a local path or a blob name
    name: str  # what messages show: the path or the blob URL (never a SAS)
    hub: tuple[str, str]  # (namespace, event hub); "" where the layout has no such token
    partition_id: str
    window_start: datetime


def _layout_matcher(layout: str) -> re.Pattern[str]:
    found = re.findall(r"\{(\w+)\}", layout)
    unknown = sorted(set(found) - set(_TOKENS))
    if unknown:
        raise ConfigError(f"capture layout {layout!r}: unknown token(s) {unknown}")
    missing = [t for t in _TOKENS if t not in found]
    if missing or len(found) != len(set(found)):
        raise ConfigError(
            f"capture layout {layout!r} must hold each of {{{'}, {'.join(_TOKENS)}}} once"
        )
    pattern = "".join(
        _TOKENS[part[1:-1]] if re.fullmatch(r"\{\w+\}", part) else re.escape(part)
        for part in re.split(r"(\{\w+\})", layout)
        if part
    )
    return re.compile(rf"(?:\A|/){pattern}\.avro\Z")


def _classify(
    keys: Iterable[str],
    matcher: re.Pattern[str],
    layout: str,
    describe: Callable[[str], str],
) -> dict[str, list[_CaptureFile]]:
    """Capture files by partition, each list in window-start (then name) order."""
    by_partition: dict[str, list[_CaptureFile]] = {}
    hubs: set[tuple[str, str]] = set()
    for key in keys:
        name = describe(key)
        match = matcher.search(key)
        if match is None:
            raise _unreadable(
                f"{name}: not named like a Capture file ({layout}.avro); "
                "point the location at the capture folder or pass its layout"
            )
        fields = match.groupdict()
        try:
            window_start = datetime(
                int(fields["year"]),
                int(fields["month"]),
                int(fields["day"]),
                int(fields["hour"]),
                int(fields["minute"]),
                int(fields["second"]),
                tzinfo=UTC,
            )
        except ValueError as exc:
            raise _unreadable(f"{name}: the path's time is not a valid time ({exc})") from None
        hub = (fields.get("namespace") or "", fields.get("eventhub") or "")
        hubs.add((hub[0].lower(), hub[1].lower()))
        capture_file = _CaptureFile(key, name, hub, fields["partition"], window_start)
        by_partition.setdefault(capture_file.partition_id, []).append(capture_file)
    if len(hubs) > 1:
        listed = ", ".join(sorted(f"{ns}/{eh}" for ns, eh in hubs))
        raise _unreadable(
            f"the location holds the captures of several event hubs ({listed}); "
            "point it at one of them (.../NAMESPACE/EVENTHUB)"
        )
    for files in by_partition.values():
        files.sort(key=lambda f: (f.window_start, f.key))
    return by_partition


def _unreadable(message: str) -> SourceError:
    """A SourceError that retrying cannot fix (a bad file, a wrong location)."""
    error = SourceError(message)
    error.retryable = False
    return error


def _partition_order(files: Mapping[str, Any]) -> list[str]:
    """Numeric ids in numeric order (2 before 10), then any others by name."""
    return sorted(files, key=lambda p: (0, int(p), p) if p.isdigit() else (1, 0, p))


def _position_for(
    positions: Position | StartPositions | None, partition_id: str, *, default: PositionKind
) -> Position:
    if positions is None:
        return Position(default)
    if isinstance(positions, Position):
        return positions
    if partition_id in positions.partitions:
        return positions.partitions[partition_id]
    if positions.partitions:  # per-partition form: the default is implied, not chosen
        return Position(default)
    return positions.default


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    sequence_number: int
    offset: str
    enqueued_time: datetime
    delivery_count: int | None
    body: bytes


def _parse_file(data: bytes, name: str) -> list[_Record]:
    """One Capture file's records, sorted by sequence number. Empty files have none."""
    if not data:
        return []
    import fastavro

    try:
        reader = fastavro.reader(io.BytesIO(data))
        schema = reader.writer_schema
        raw_records = list(reader)
    except Exception as exc:  # fastavro raises many types for a file that is not Avro
        raise _unreadable(f"{name}: not a readable Avro file ({exc})") from None
    fields = (
        {f.get("name") for f in schema.get("fields", [])}
        if isinstance(schema, dict) and schema.get("type") == "record"
        else set()
    )
    lacking = [f for f in _REQUIRED_FIELDS if f not in fields]
    if lacking:
        raise _unreadable(
            f"{name}: not an Event Hubs Capture file (its Avro schema lacks {', '.join(lacking)})"
        )
    records = [_record(raw, name) for raw in raw_records]
    records.sort(key=lambda r: r.sequence_number)
    return records


def _record(raw: Mapping[str, Any], name: str) -> _Record:
    try:
        sequence_number = int(raw["SequenceNumber"])
    except (TypeError, ValueError):
        raise _unreadable(f"{name}: a record's SequenceNumber is not a number") from None
    system = raw.get("SystemProperties") or {}
    properties = raw.get("Properties") or {}
    enqueued = _enqueued_time(system.get("x-opt-enqueued-time"), raw.get("EnqueuedTimeUtc"))
    if enqueued is None:
        raise _unreadable(
            f"{name}: sequence number {sequence_number}: cannot read its enqueued time "
            f"(EnqueuedTimeUtc {raw.get('EnqueuedTimeUtc')!r})"
        )
    body = raw.get("Body")
    return _Record(
        sequence_number=sequence_number,
        offset=str(raw.get("Offset")),
        enqueued_time=enqueued,
        delivery_count=_whole_number(properties.get("aeg-delivery-count")),
        body=bytes(body) if body is not None else b"",
    )


def _enqueued_time(system_value: Any, enqueued_utc: Any) -> datetime | None:
    """`x-opt-enqueued-time` (epoch ms, or a time string) first, else `EnqueuedTimeUtc`."""
    if isinstance(system_value, bytes):
        system_value = system_value.decode("utf-8", "replace")
    if isinstance(system_value, int | float) and not isinstance(system_value, bool):
        return _EPOCH + timedelta(milliseconds=system_value)
    for value in (system_value, enqueued_utc):
        if isinstance(value, str) and value.strip():
            moment = parse_enqueued_time(value)
            if moment is not None:
                return moment
    return None


def parse_enqueued_time(text: str) -> datetime | None:
    """A Capture time string as aware UTC: .NET's `12/2/2021 2:58:24 PM`, ISO 8601, or
    epoch milliseconds; None when it is none of these."""
    text = text.strip()
    if text.isdigit():
        return _EPOCH + timedelta(milliseconds=int(text))
    match = _DOTNET_TIME.match(text)
    if match is None:
        try:
            return parse_time(text)[0]
        except ValueError:
            return None
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, half = match.group(7) or "", (match.group(8) or "").upper()
    if half:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half == "P" else 0)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return moment + timedelta(microseconds=int(fraction[:6].ljust(6, "0") or 0))


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _offset_cmp(offset: str, target: str) -> int | None:
    """-1, 0, 1 for numeric offsets; 0 / None (unordered) for other strings."""
    try:
        a, b = int(offset), int(target)
    except ValueError:
        return 0 if offset == target else None
    return (a > b) - (a < b)


# --- one partition --------------------------------------------------------------------------


class _PartitionReader:
    """A partition's files in order, narrowed by `start`/`until`, each sequence number once."""

    def __init__(
        self,
        partition_id: str,
        files: list[_CaptureFile],
        store: _Store,
        start: Position,
        until: Position,
    ) -> None:
        self.partition_id = partition_id
        self.files = files
        self.store = store
        self.start = start
        self.until = until
        self.last_sequence_number: int | None = None
        self.started = start.kind is not PositionKind.OFFSET  # offset: from the one named
        self.passed_until = False  # offset: the one named was seen

    async def __aiter__(self) -> AsyncIterator[tuple[bytes, Origin]]:
        if self.until.kind is PositionKind.EARLIEST:
            return
        if self.start.kind is PositionKind.LATEST:
            last = await self._last_record()
            if last is not None and not self._beyond_until(last):
                yield self._emit(last)
            return
        for capture_file in self._narrowed(self.files):
            records = await self._read(capture_file)
            skipped = 0
            for record in records:
                if (
                    self.last_sequence_number is not None
                    and record.sequence_number <= self.last_sequence_number
                ):
                    skipped += 1
                    continue
                if self._beyond_until(record):
                    if self.until.kind in (PositionKind.SEQUENCE, PositionKind.OFFSET):
                        self._log_skipped(capture_file, skipped)
                        return  # sequence numbers and offsets only grow from here
                    continue
                if not self._at_or_after_start(record):
                    continue
                yield self._emit(record)
            self._log_skipped(capture_file, skipped)

    def _narrowed(self, files: list[_CaptureFile]) -> list[_CaptureFile]:
        """Drop whole files that a `time:` start or until puts out of reach."""
        kept = files
        if self.start.kind is PositionKind.TIME:
            kept = [f for f in kept if f.window_start + WINDOW_MARGIN >= self.start.value]
        if self.until.kind is PositionKind.TIME:
            kept = [f for f in kept if f.window_start - WINDOW_MARGIN <= self.until.value]
        return kept

    async def _last_record(self) -> _Record | None:
        for capture_file in reversed(self.files):
            records = await self._read(capture_file)
            if records:
                return records[-1]
        return None

    async def _read(self, capture_file: _CaptureFile) -> list[_Record]:
        data = await self.store.read(capture_file.key)
        records = await asyncio.to_thread(_parse_file, data, capture_file.name)
        log.debug(
            "capture_file_read",
            file=capture_file.name,
            partition_id=self.partition_id,
            records=len(records),
        )
        return records

    def _at_or_after_start(self, record: _Record) -> bool:
        kind, value = self.start.kind, self.start.value
        if kind is PositionKind.SEQUENCE:
            return record.sequence_number >= int(value)
        if kind is PositionKind.TIME:
            return record.enqueued_time >= value
        if kind is PositionKind.OFFSET and not self.started:
            order = _offset_cmp(record.offset, str(value))
            self.started = order is not None and order >= 0
        return self.started

    def _beyond_until(self, record: _Record) -> bool:
        kind, value = self.until.kind, self.until.value
        if kind is PositionKind.SEQUENCE:
            return record.sequence_number > int(value)
        if kind is PositionKind.TIME:
            return record.enqueued_time > value
        if kind is PositionKind.OFFSET:
            order = _offset_cmp(record.offset, str(value))
            if order is None:  # offsets that are not numbers: stop after the one named
                return self.passed_until
            if order == 0:
                self.passed_until = True
            return order > 0
        return False

    def _emit(self, record: _Record) -> tuple[bytes, Origin]:
        self.last_sequence_number = record.sequence_number
        origin = Origin(
            partition_id=self.partition_id,
            offset=record.offset,
            sequence_number=record.sequence_number,
            enqueued_time=record.enqueued_time,
            delivery_count=record.delivery_count,
        )
        return record.body, origin

    def _log_skipped(self, capture_file: _CaptureFile, skipped: int) -> None:
        if skipped:
            log.info(
                "capture_records_skipped",
                file=capture_file.name,
                partition_id=self.partition_id,
                count=skipped,
                reason="sequence numbers already read from an earlier file",
            )


# --- storage --------------------------------------------------------------------------------


class _Store:
    async def __aenter__(self) -> _Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        return None

    async def list_avro(self) -> list[str]:
        raise NotImplementedError

    async def read(self, key: str) -> bytes:
        raise NotImplementedError

    def describe(self, key: str) -> str:
        return key


class _LocalStore(_Store):
    def __init__(self, location: str) -> None:
        self.root = Path(location)

    async def list_avro(self) -> list[str]:
        def scan() -> list[str]:
            if self.root.is_file():
                return [self.root.as_posix()]
            if not self.root.is_dir():
                raise _unreadable(f"capture location {self.root} not found")
            return [p.as_posix() for p in self.root.rglob("*.avro") if p.is_file()]

        return await asyncio.to_thread(scan)

    async def read(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(Path(key).read_bytes)
        except OSError as exc:
            raise SourceError(f"cannot read {key}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class _BlobLocation:
    account_url: str  # https://acct.blob.core.windows.net or path-style http://HOST:N/account
    container: str
    prefix: str  # "" or a folder ending in "/"
    sas: str | None

    @property
    def container_url(self) -> str:
        return f"{self.account_url}/{self.container}"


def _parse_blob_url(url: str) -> _BlobLocation:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigError(f"capture URL {_without_query(url)} names no host")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if _path_style(host):  # Azurite and other emulators: /ACCOUNT/CONTAINER/...
        if len(segments) < 2:
            raise ConfigError(
                f"capture URL {_without_query(url)} needs /ACCOUNT/CONTAINER[/PREFIX]"
            )
        account_url = f"{parts.scheme}://{netloc}/{segments[0]}"
        segments = segments[1:]
    else:
        if not segments:
            raise ConfigError(f"capture URL {_without_query(url)} names no container")
        netloc = netloc.replace(".dfs.core.", ".blob.core.")  # Data Lake Gen2 = same blobs
        account_url = f"{parts.scheme}://{netloc}"
    prefix = "/".join(segments[1:])
    return _BlobLocation(
        account_url=account_url,
        container=segments[0],
        prefix=prefix + "/" if prefix else "",
        sas=parts.query or None,
    )


def _path_style(host: str) -> bool:
    if "." not in host:  # a single-label host: an emulator or a private endpoint
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _endpoint_key(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc.rsplit("@", 1)[-1] + parts.path.rstrip("/")).lower()


class _BlobStore(_Store):
    """A container (and folder prefix) read with azure.storage.blob.aio."""

    def __init__(self, url: str, credential: Any, connection_string: str | None) -> None:
        from azure.storage.blob.aio import ContainerClient

        self.location = _parse_blob_url(url)
        self._own_credential: Any = None
        loc = self.location
        if loc.sas:
            self.auth = "the SAS in the URL"
            self.client = ContainerClient(loc.account_url, loc.container, credential=loc.sas)
            return
        if connection_string:
            try:
                client = ContainerClient.from_connection_string(connection_string, loc.container)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"invalid storage connection string: {exc}") from None
            if _endpoint_key(client.url) == _endpoint_key(loc.container_url):
                self.auth = "the connection string"
                self.client = client
                return
            log.debug("capture_connection_string_unused", reason="another storage account")
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = self._own_credential = DefaultAzureCredential()
        self.auth = "an Azure AD credential"
        self.client = ContainerClient(loc.account_url, loc.container, credential=credential)

    def describe(self, key: str) -> str:
        return f"{self.location.container_url}/{key}"

    async def aclose(self) -> None:
        try:
            await self.client.close()
        finally:
            if self._own_credential is not None:
                await self._own_credential.close()

    async def list_avro(self) -> list[str]:
        from azure.core.exceptions import AzureError

        names: list[str] = []
        try:
            async for blob in self.client.list_blobs(name_starts_with=self.location.prefix or None):
                if blob.name.endswith(".avro"):
                    names.append(blob.name)
        except AzureError as exc:
            raise SourceError(
                f"cannot list {self.location.container_url}/{self.location.prefix} "
                f"(with {self.auth}): {self._message(exc)}"
            ) from None
        return names

    async def read(self, key: str) -> bytes:
        from azure.core.exceptions import AzureError

        try:
            downloader = await self.client.download_blob(key)
            return await downloader.readall()
        except AzureError as exc:
            raise SourceError(
                f"cannot read {self.describe(key)} (with {self.auth}): {self._message(exc)}"
            ) from None

    def _message(self, exc: Exception) -> str:
        """The SDK error's first line, with the SAS (should it echo the URL) masked."""
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        message = message.splitlines()[0]
        if self.location.sas:
            message = message.replace(self.location.sas, "***")
        return message
