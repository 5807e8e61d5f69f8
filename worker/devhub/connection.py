"""One client connection: proton's protocol engine driven by asyncio.

Why this way (shared/eventhubs-amqp-notes.md): proton's `Transport` + `Collector` do the AMQP
state machines (SASL ANONYMOUS, open/begin/attach, flow control, multi-frame deliveries, idle
timeout and heartbeats), but every byte proton writes goes through `FrameNormalizer`, because
the SDK's stack reads performative fields by position; and the event loop is asyncio's, not
proton's reactor, so one process serves many connections cheaply and a new event reaches a
waiting receiver through a direct wake-up, not polling.

Input is pushed in `capacity()`-sized chunks and the collector's events dispatched after each
chunk; output is drained in a loop (`pending()` hands out one buffer at a time). Links are
given a role from their address (see `links.py`); unknown entities are attached, then
detached with `amqp:not-found`, bad start positions with `com.microsoft:argument-out-of-range`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import proton
import structlog
from proton import Condition, Endpoint, Event, Link

from worker.devhub.address import Node, NodeKind, parse_node
from worker.devhub.frames import FrameNormalizer
from worker.devhub.links import (
    PRODUCER_CREDIT,
    REQUEST_CREDIT,
    ConsumerLink,
    ProducerLink,
    ReplyLink,
    RequestLink,
    Role,
)
from worker.devhub.ownership import LINK_STOLEN, ReceiverRegistry
from worker.devhub.position import PositionError, position_from_filters
from worker.devhub.store import Partition

if TYPE_CHECKING:
    from worker.devhub.server import DevHub

__all__ = ["Connection"]

log = structlog.get_logger(__name__)

IDLE_TIMEOUT_S = 120.0  # advertised in our open; proton heartbeats at half the client's
TICK_S = 1.0
MAX_FRAME_SIZE = 256 * 1024
MAX_MESSAGE_SIZE = 1024 * 1024  # Event Hubs Standard's limit; the SDK sizes batches by it
NOT_FOUND = "amqp:not-found"
ARGUMENT_OUT_OF_RANGE = "com.microsoft:argument-out-of-range"
EPOCH = proton.symbol("com.microsoft:epoch")


class Connection(asyncio.Protocol):
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
        self._roles: set[Role] = set()
        self._to_pump: set[ConsumerLink] = set()
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
                if capacity < 0:
                    break  # the engine reads no more: the connection is closing
                if capacity == 0:  # cannot happen with valid frames; never drop bytes silently
                    raise proton.TransportException("the AMQP engine accepts no more input")
                engine.push(bytes(view[:capacity]))
                view = view[capacity:]
                self._dispatch()
        except proton.TransportException as exc:
            log.info("devhub_connection_error", peer=self._peer, error=str(exc))
            engine.close_tail()
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
        self._to_pump.update(r for r in self._roles if isinstance(r, ConsumerLink))
        self._schedule()

    # --- helpers used by roles ------------------------------------------------------------

    def want_pump(self, consumer: ConsumerLink) -> None:
        self._to_pump.add(consumer)
        self._schedule()

    def forget_pump(self, consumer: ConsumerLink) -> None:
        self._to_pump.discard(consumer)
        self._roles.discard(consumer)

    def detach(self, link: Link, condition: str, description: str) -> None:
        """Close a link with an error (from any connection's context) and flush soon."""
        link.condition = Condition(condition, description)
        link.close()
        self._schedule()

    def reply_link(self, node: NodeKind, reply_to: str | None, session: Any) -> ReplyLink | None:
        candidates = [r for r in self._roles if isinstance(r, ReplyLink) and r.node is node]
        if reply_to:
            for role in candidates:
                if role.link.remote_target.address == reply_to:
                    return role
        same_session = [r for r in candidates if r.link.session == session]
        return (same_session or candidates or [None])[0]

    def freeze_receivers(self) -> int:
        """Fault injection: this connection's partition readers stay attached but stop
        delivering, the silent stall that real consumers must detect and reconnect."""
        frozen = 0
        for role in self._roles:
            if isinstance(role, ConsumerLink) and not role.frozen:
                role.frozen = True
                frozen += 1
        return frozen

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
                self._adopt(ReplyLink(self, link, node.kind))
                link.open()
            elif node.kind is NodeKind.CONSUMER:
                self._open_consumer(link, node)
            else:
                self._refuse(link, NOT_FOUND, _unknown(link.remote_source.address))
            return
        node = parse_node(link.remote_target.address)
        if node.kind in (NodeKind.CBS, NodeKind.MANAGEMENT):
            self._adopt(RequestLink(self, link, node.kind))
            link.open()
            link.flow(REQUEST_CREDIT)
        elif node.kind is NodeKind.HUB:
            hub = self.server.store.hub(node.hub)
            if hub is None:
                self._refuse(link, NOT_FOUND, _unknown(link.remote_target.address))
            elif node.partition_id is not None and node.partition_id not in hub.partitions:
                self._refuse(link, NOT_FOUND, _no_partition(hub.name, node, hub.partitions))
            else:
                self._adopt(ProducerLink(self, link, node))
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
        consumer = ConsumerLink(self, link, partition, key, index, epoch)
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
            if isinstance(old, ConsumerLink):
                old.steal(
                    LINK_STOLEN,
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

    def _adopt(self, role: Role) -> None:
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
