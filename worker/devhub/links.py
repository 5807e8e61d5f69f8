"""What each kind of link does: read a partition, accept sends, answer requests.

Why separate from the connection: these are the Event Hubs semantics (credit-bounded delivery
from a start index, storing then Accepting, request/reply on `$cbs` and `$management`, being
detached as stolen), while `connection.py` is only proton plumbing. A role is attached to its
proton link as `link.devhub`.

- `ConsumerLink`: sender link on `<hub>/ConsumerGroups/<cg>/Partitions/<id>`; sends stored
  events pre-settled, never more than the link credit, and is woken directly by the partition
  when a new event arrives.
- `ProducerLink`: receiver link on `<hub>` or `<hub>/Partitions/<id>`; a delivery (possibly a
  batch, possibly multi-frame) is stored - written to the log first when there is one - and
  only then settled Accepted.
- `RequestLink` / `ReplyLink`: the two halves of `$cbs` and `$management`.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from typing import TYPE_CHECKING

import structlog
from proton import Condition, Delivery, Link

from worker.devhub.address import Node, NodeKind
from worker.devhub.management import answer, encode_reply, parse_request
from worker.devhub.message import MessageFormatError, split_delivery
from worker.devhub.store import Partition

if TYPE_CHECKING:
    from worker.devhub.connection import Connection

__all__ = ["ConsumerLink", "ProducerLink", "ReplyLink", "RequestLink", "Role"]

log = structlog.get_logger(__name__)

PRODUCER_CREDIT = 500
REQUEST_CREDIT = 100
DECODE_ERROR = "amqp:decode-error"
INTERNAL_ERROR = "amqp:internal-error"
_TAG = struct.Struct(">Q")


class Role:
    """What one proton link does for dev-hub; stored on the link as `link.devhub`."""

    def __init__(self, conn: Connection, link: Link) -> None:
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


class ConsumerLink(Role):
    """A partition reader: sends stored events from `index` on, never more than the credit."""

    def __init__(
        self,
        conn: Connection,
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
        self.frozen = False  # fault injection: attached, but never delivers again

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def wake(self) -> None:
        """Called by the partition after an append (possibly from another connection)."""
        self.conn.want_pump(self)

    def on_flow(self) -> None:
        self.pump()

    def pump(self) -> None:
        if self.closed or self.frozen:
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


class ProducerLink(Role):
    """A send link on a hub or one partition: events are stored, then the delivery Accepted."""

    def __init__(self, conn: Connection, link: Link, node: Node) -> None:
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
                INTERNAL_ERROR, f"dev-hub could not store the event: {exc}"
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


class RequestLink(Role):
    """The request side of `$cbs` / `$management`: answers go to the paired reply link."""

    def __init__(self, conn: Connection, link: Link, node: NodeKind) -> None:
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
        if link.credit < REQUEST_CREDIT // 10:
            link.flow(REQUEST_CREDIT - link.credit)


class ReplyLink(Role):
    """The reply side of `$cbs` / `$management`: queued answers, sent as credit allows."""

    def __init__(self, conn: Connection, link: Link, node: NodeKind) -> None:
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
