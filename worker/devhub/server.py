"""Connections and links: proton's protocol engine driven by asyncio, Event Hubs semantics on top.

Why this way (shared/eventhubs-amqp-notes.md): proton's `Transport` + `Collector` do the AMQP
state machines (SASL, open/begin/attach, flow control, multi-frame deliveries, idle timeout and
heartbeats), but the bytes proton writes go through `FrameNormalizer`, because the SDK's stack
reads performative fields by position; and the event loop is asyncio's, not proton's reactor,
so one process serves many connections cheaply and a new event reaches a waiting receiver
through a direct wake-up (no polling).

Per connection: input is pushed in `capacity()`-sized chunks, the collector's events are
dispatched, and output is drained in a loop. Link roles by address:

- receiver links (client sends): `$cbs`, `$management` requests; producers on `<hub>` or
  `<hub>/Partitions/<id>`;
- sender links (client receives): `$cbs`, `$management` replies; consumers on
  `<hub>/ConsumerGroups/<cg>/Partitions/<id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import proton
import structlog
from proton import Condition, Delivery, Endpoint, Event, Link

from worker.devhub.address import (
    DEFAULT_HUB,
    DEFAULT_PARTITIONS,
    Node,
    NodeKind,
    connection_string,
    parse_node,
)
from worker.devhub.frames import FrameNormalizer
from worker.devhub.management import answer, encode_reply, parse_request
from worker.devhub.message import MessageFormatError, split_delivery
from worker.devhub.ownership import ReceiverRegistry
from worker.devhub.position import PositionError, position_from_filters
from worker.devhub.store import Partition, Store

__all__ = ["DevHub", "serve"]

log = structlog.get_logger(__name__)

IDLE_TIMEOUT_S = 120.0  # advertised in our open; proton heartbeats at half the client's
TICK_S = 1.0
MAX_FRAME_SIZE = 256 * 1024
MAX_MESSAGE_SIZE = 1024 * 1024  # Event Hubs Standard's limit; the SDK sizes batches by it
PRODUCER_CREDIT = 500
NOT_FOUND = "amqp:not-found"
ARGUMENT_OUT_OF_RANGE = "com.microsoft:argument-out-of-range"
NOT_IMPLEMENTED = "amqp:not-implemented"
DECODE_ERROR = "amqp:decode-error"
EPOCH = proton.symbol("com.microsoft:epoch")
_TAG = struct.Struct(">Q")


class _Role:
    """What one proton link does for dev-hub; stored on the link as `link.devhub`."""

    def __init__(self, conn: _Connection, link: Link) -> None:
        self.conn = conn
        self.link = link
        self.closed = False

    def on_flow(self) -> None:
        """The client changed this (sender) link's credit."""

    def on_delivery(self, delivery: Delivery) -> None:
        """A delivery on this link was received or updated."""

    def close(self) -> None:
        """Forget the link (remote detach, stolen, or connection gone)."""
        self.closed = True


class _Consumer(_Role):
    """A partition reader: sends stored events from `index` on, never more than the credit."""

    def __init__(
        self,
        conn: _Connection,
        link: Link,
        partition: Partition,
        key: tuple[str, str, str],
        index: int,
        epoch: int | None,
    ) -> None:
        super().__init__(conn, link)
        self.partition = partition
        self.key = key
        self.index = index
        self._epoch = epoch

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def wake(self) -> None:
        """Called by the partition after an append (possibly from another connection)."""
        self.conn.want_pump(self)

    def on_flow(self) -> None:
        self.pump()

    def pump(self) -> None:
        if self.closed:
            return
        link = self.link
        credit = link.credit
        payloads = self.partition.payloads
        end = min(len(payloads), self.index + credit)
        index = self.index
        while index < end:
            delivery = link.delivery(_TAG.pack(index))
            link.send(payloads[index])
            link.advance()
            delivery.settle()  # pre-settled, as the SDK's receive-and-settle-first mode allows
            index += 1
        self.index = index
        if link.drain_mode and link.credit > 0 and index >= len(payloads):
            link.drained()

    def steal(self, condition: str, description: str) -> None:
        """Detach this reader because a receiver with an equal or higher epoch took over."""
        if self.closed:
            return
        log.info(
            "devhub_receiver_stolen",
            hub=self.key[0],
            consumer_group=self.key[1],
            partition_id=self.key[2],
            epoch=self.epoch,
        )
        self.conn.detach(self.link, condition, description)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.partition.listeners.discard(self.wake)
            self.conn.server.registry.remove(self.key, self)
            self.conn.forget_pump(self)
        super().close()


class _Producer(_Role):
    """A send link on a hub or one partition: events are stored, then the delivery Accepted."""

    def __init__(self, conn: _Connection, link: Link, node: Node) -> None:
        super().__init__(conn, link)
        self.node = node

    def on_delivery(self, delivery: Delivery) -> None:
        if not delivery.readable or delivery.partial:
            return  # wait for the last frame of a multi-frame delivery
        link = self.link
        payload = link.recv(delivery.pending) or b""
        link.advance()
        try:
            self._store(payload)
        except MessageFormatError as exc:
            delivery.local.condition = Condition(DECODE_ERROR, f"not an AMQP message: {exc}")
            delivery.update(Delivery.REJECTED)
        except Exception as exc:  # a write error or a dev-hub bug: refuse, keep serving
            log.exception("devhub_store_failed", error=str(exc))
            delivery.local.condition = Condition(
                "amqp:internal-error", f"dev-hub could not store the event: {exc}"
            )
            delivery.update(Delivery.REJECTED)
        else:
            delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        if link.credit < PRODUCER_CREDIT // 2:
            link.flow(PRODUCER_CREDIT - link.credit)

    def _store(self, payload: bytes) -> None:
        hub = self.conn.server.store.hub(self.node.hub)
        if hub is None:  # pragma: no cover - checked at attach; hubs never disappear
            raise MessageFormatError(f"hub {self.node.hub!r} is gone")
        partition_key, events = split_delivery(payload)
        if self.node.partition_id is not None:
            partition = hub.partitions[self.node.partition_id]
        else:
            partition = hub.partition_for_key(partition_key)
        partition.append(events)


class _Requests(_Role):
    """The request side of `$cbs` / `$management`: answers go to the paired reply link."""

    def __init__(self, conn: _Connection, link: Link, node: NodeKind) -> None:
        super().__init__(conn, link)
        self.node = node

    def on_delivery(self, delivery: Delivery) -> None:
        if not delivery.readable or delivery.partial:
            return
        link = self.link
        payload = link.recv(delivery.pending) or b""
        link.advance()
        try:
            request = parse_request(payload)
        except MessageFormatError as exc:
            delivery.local.condition = Condition(DECODE_ERROR, f"not an AMQP message: {exc}")
            delivery.update(Delivery.REJECTED)
            delivery.settle()
            return
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        reply = answer(self.node, request, self.conn.server.store)
        replies = self.conn.reply_link(self.node, request.reply_to, link.session)
        if replies is None:
            log.warning("devhub_reply_link_missing", node=str(self.node))
            return
        replies.queue.append(encode_reply(request, reply))
        replies.pump()
        if link.credit < 10:
            link.flow(100 - link.credit)


class _Replies(_Role):
    """The reply side of `$cbs` / `$management`: queued answers, sent as credit allows."""

    def __init__(self, conn: _Connection, link: Link, node: NodeKind) -> None:
        super().__init__(conn, link)
        self.node = node
        self.queue: deque[bytes] = deque()
        self._tags = itertools.count()

    def on_flow(self) -> None:
        self.pump()

    def pump(self) -> None:
        link = self.link
        while self.queue and link.credit > 0 and not self.closed:
            delivery = link.delivery(_TAG.pack(next(self._tags)))
            link.send(self.queue.popleft())
            link.advance()
            delivery.settle()


class _Connection(asyncio.Protocol):
    """One client connection: a proton engine between an asyncio socket and dev-hub."""

    def __init__(self, server: DevHub) -> None:
        self.server = server
        self._loop = asyncio.get_running_loop()
        self._socket: asyncio.Transport | None = None
        self._engine = proton.Transport(proton.Transport.SERVER)
        self._engine.idle_timeout = IDLE_TIMEOUT_S
        self._engine.max_frame_size = MAX_FRAME_SIZE
        self._engine.sasl().allowed_mechs("ANONYMOUS")
        self._connection = proton.Connection()
        self._collector = proton.Collector()
        self._connection.collect(self._collector)
        self._engine.bind(self._connection)
        self._normalizer = FrameNormalizer()
        self._roles: set[_Role] = set()
        self._to_pump: set[_Consumer] = set()
        self._scheduled = False
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._peer = "?"

    # --- asyncio side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connections.add(self)
        log.debug("devhub_connection_opened", peer=self._peer)
        self._timer = self._loop.call_later(TICK_S, self._tick)

    def data_received(self, data: bytes) -> None:
        engine = self._engine
        view = memoryview(data)
        try:
            while view:
                capacity = engine.capacity()
                if capacity <= 0:
                    break  # input side closed: nothing more will be read
                engine.push(bytes(view[:capacity]))
                view = view[capacity:]
                self._dispatch()
        except proton.TransportException as exc:
            log.info("devhub_connection_error", peer=self._peer, error=str(exc))
        self._service()

    def eof_received(self) -> bool | None:
        self._engine.close_tail()
        self._service()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._engine.close_tail()
        self._engine.close_head()
        with contextlib.suppress(Exception):
            self._dispatch()
        for role in list(self._roles):
            role.close()
        self._roles.clear()
        self._to_pump.clear()
        self.server.connections.discard(self)
        log.debug("devhub_connection_closed", peer=self._peer)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._to_pump.update(r for r in self._roles if isinstance(r, _Consumer))
        self._schedule()

    # --- helpers used by roles ------------------------------------------------------------

    def want_pump(self, consumer: _Consumer) -> None:
        self._to_pump.add(consumer)
        self._schedule()

    def forget_pump(self, consumer: _Consumer) -> None:
        self._to_pump.discard(consumer)
        self._roles.discard(consumer)

    def detach(self, link: Link, condition: str, description: str) -> None:
        """Close a link with an error (from any connection's context) and flush soon."""
        link.condition = Condition(condition, description)
        link.close()
        self._schedule()

    def reply_link(self, node: NodeKind, reply_to: str | None, session: Any) -> _Replies | None:
        candidates = [r for r in self._roles if isinstance(r, _Replies) and r.node is node]
        if reply_to:
            for role in candidates:
                if role.link.remote_target.address == reply_to:
                    return role
        same_session = [r for r in candidates if r.link.session == session]
        return (same_session or candidates or [None])[0]

    def shutdown(self) -> None:
        """Close the AMQP connection (server stopping) and let the socket drain."""
        if self._connection.state & Endpoint.LOCAL_ACTIVE:
            self._connection.condition = Condition(
                "amqp:connection:forced", "dev-hub is shutting down"
            )
            self._connection.close()
        self._service()
        if self._socket is not None:
            self._socket.close()

    # --- proton side ----------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._service)

    def _service(self) -> None:
        self._scheduled = False
        self._dispatch()
        if self._to_pump and not self._paused:
            pumping, self._to_pump = self._to_pump, set()
            for consumer in pumping:
                consumer.pump()
            self._dispatch()
        self._flush()

    def _tick(self) -> None:
        self._timer = None
        if self._socket is None or self._socket.is_closing():
            return
        self._engine.tick(time.monotonic())
        self._service()
        self._timer = self._loop.call_later(TICK_S, self._tick)

    def _flush(self) -> None:
        engine = self._engine
        socket = self._socket
        if socket is None or socket.is_closing():
            return
        while True:
            pending = engine.pending()
            if pending < 0:
                socket.close()  # the engine will write no more: the AMQP connection is over
                return
            if pending == 0:
                return
            data = engine.peek(pending)
            engine.pop(pending)
            if data:
                socket.write(self._normalizer.feed(data))

    def _dispatch(self) -> None:
        collector = self._collector
        while (event := collector.peek()) is not None:
            try:
                self._handle(event)
            except Exception:  # a dev-hub bug must not take the whole server down
                log.exception("devhub_event_failed", peer=self._peer, event_type=str(event.type))
            finally:
                collector.pop()

    def _handle(self, event: Event) -> None:
        kind = event.type
        if kind == Event.DELIVERY:
            role = getattr(event.link, "devhub", None)
            if role is not None and not role.closed:
                role.on_delivery(event.delivery)
            elif event.delivery is not None and event.link.is_receiver:
                event.delivery.settle()
        elif kind == Event.LINK_FLOW:
            role = getattr(event.link, "devhub", None)
            if role is not None and not role.closed:
                role.on_flow()
        elif kind == Event.LINK_REMOTE_OPEN:
            self._open_link(event.link)
        elif kind == Event.LINK_REMOTE_CLOSE:
            link = event.link
            role = getattr(link, "devhub", None)
            if role is not None:
                role.close()
                self._roles.discard(role)
            if not link.state & Endpoint.LOCAL_CLOSED:
                link.close()
        elif kind == Event.SESSION_REMOTE_OPEN:
            if event.session.state & Endpoint.LOCAL_UNINIT:
                event.session.open()
        elif kind == Event.SESSION_REMOTE_CLOSE:
            if not event.session.state & Endpoint.LOCAL_CLOSED:
                event.session.close()
        elif kind == Event.CONNECTION_REMOTE_OPEN:
            if event.connection.state & Endpoint.LOCAL_UNINIT:
                event.connection.container = "dev-hub"
                event.connection.open()
        elif kind == Event.CONNECTION_REMOTE_CLOSE and not (
            event.connection.state & Endpoint.LOCAL_CLOSED
        ):
            event.connection.close()

    def _open_link(self, link: Link) -> None:
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_sender:
            node = parse_node(link.remote_source.address)
            if node.kind in (NodeKind.CBS, NodeKind.MANAGEMENT):
                self._adopt(_Replies(self, link, node.kind))
                link.open()
            elif node.kind is NodeKind.CONSUMER:
                self._open_consumer(link, node)
            else:
                self._refuse(link, NOT_FOUND, _unknown(link.remote_source.address))
            return
        node = parse_node(link.remote_target.address)
        if node.kind in (NodeKind.CBS, NodeKind.MANAGEMENT):
            self._adopt(_Requests(self, link, node.kind))
            link.open()
            link.flow(100)
        elif node.kind is NodeKind.HUB:
            hub = self.server.store.hub(node.hub)
            if hub is None:
                self._refuse(link, NOT_FOUND, _unknown(link.remote_target.address))
            elif node.partition_id is not None and node.partition_id not in hub.partitions:
                self._refuse(link, NOT_FOUND, _no_partition(hub.name, node, hub.partitions))
            else:
                self._adopt(_Producer(self, link, node))
                link.max_message_size = MAX_MESSAGE_SIZE
                link.open()
                link.flow(PRODUCER_CREDIT)
        else:
            self._refuse(link, NOT_FOUND, _unknown(link.remote_target.address))

    def _open_consumer(self, link: Link, node: Node) -> None:
        hub = self.server.store.hub(node.hub)
        if hub is None:
            self._refuse(link, NOT_FOUND, _unknown(link.remote_source.address))
            return
        partition = hub.partitions.get(node.partition_id or "")
        if partition is None:
            self._refuse(link, NOT_FOUND, _no_partition(hub.name, node, hub.partitions))
            return
        try:
            position = position_from_filters(_data_object(link.remote_source.filter))
            index = partition.start_index(position)
        except PositionError as exc:
            self._refuse(link, ARGUMENT_OUT_OF_RANGE, str(exc))
            return
        properties = link.remote_properties or {}
        epoch_value = properties.get(EPOCH) if isinstance(properties, dict) else None
        epoch = int(epoch_value) if epoch_value is not None else None
        key = ReceiverRegistry.key(hub.name, node.consumer_group, partition.partition_id)
        consumer = _Consumer(self, link, partition, key, index, epoch)
        admission = self.server.registry.admit(key, consumer)
        if not admission.admitted:
            log.info(
                "devhub_receiver_refused",
                hub=hub.name,
                consumer_group=node.consumer_group,
                partition_id=partition.partition_id,
                epoch=epoch,
                reason=admission.description,
            )
            self._refuse(link, admission.condition, admission.description)
            return
        for old in admission.evicted:
            if isinstance(old, _Consumer):
                old.steal(
                    "amqp:link:stolen",
                    f"a new receiver with epoch {epoch} took over partition "
                    f"{partition.partition_id} of consumer group {node.consumer_group!r}",
                )
        self._adopt(consumer)
        partition.listeners.add(consumer.wake)
        link.open()
        log.debug(
            "devhub_receiver_attached",
            hub=hub.name,
            consumer_group=node.consumer_group,
            partition_id=partition.partition_id,
            epoch=epoch,
            start_index=index,
        )

    def _adopt(self, role: _Role) -> None:
        role.link.devhub = role
        self._roles.add(role)

    def _refuse(self, link: Link, condition: str, description: str) -> None:
        """Attach, then detach with an error: how Event Hubs refuses a link."""
        link.open()
        link.condition = Condition(condition, description)
        link.close()


def _data_object(data: proton.Data | None) -> Any:
    """A proton `Data` value as Python (it must be rewound and advanced before reading)."""
    if data is None:
        return None
    data.rewind()
    if not data.next():
        return None
    return data.get_object()


def _unknown(address: str | None) -> str:
    return f"the messaging entity '{address}' could not be found"


def _no_partition(hub: str, node: Node, partitions: Mapping[str, Partition]) -> str:
    return (
        f"partition {node.partition_id!r} does not exist in hub '{hub}'; "
        f"its partitions are {', '.join(partitions)}"
    )


class DevHub:
    """A local Event Hubs-compatible AMQP server (an async context manager).

    `hubs` maps hub names to partition counts (default: `aml-events` with 4); `port=0` picks a
    free port (read it from `port` after `start()`); `data_dir` keeps events across restarts.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5672,
        hubs: Mapping[str, int] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.hubs = dict(hubs) if hubs else {DEFAULT_HUB: DEFAULT_PARTITIONS}
        self.data_dir = data_dir
        self.store = Store(self.hubs, data_dir)
        self.registry = ReceiverRegistry()
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._port

    def connection_string(self, hub: str | None = None) -> str:
        return connection_string(self.host, self._port, hub)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("dev-hub is already started")
        self.store = Store(self.hubs, self.data_dir)
        self.registry = ReceiverRegistry()
        self.store.open()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), self.host, self._port
            )
        except BaseException:
            self.store.close()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        log.info(
            "devhub_listening",
            host=self.host,
            port=self._port,
            hubs=self.hubs,
            data_dir=str(self.data_dir) if self.data_dir else None,
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.connections):
            conn.shutdown()
        await server.wait_closed()
        await asyncio.sleep(0)  # let closed sockets deliver connection_lost
        self.store.close()
        log.info("devhub_stopped", port=self._port)

    async def __aenter__(self) -> DevHub:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve(
    host: str,
    port: int,
    hubs: Mapping[str, int],
    data_dir: Path | None,
    *,
    ready: Callable[[DevHub], None] | None = None,
) -> None:
    """Run dev-hub until cancelled, SIGTERM or SIGINT; `ready` is called once it listens."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    async with DevHub(host, port, hubs, data_dir) as hub:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals here: cancellation still works
            installed.append(signum)
        try:
            if ready is not None:
                ready(hub)
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
