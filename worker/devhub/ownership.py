"""Who may read a partition in a consumer group: Event Hubs' epoch (owner level) rules.

Why it matters: the SDK's load balancing relies on the service to fence off a stale owner.
When a processor takes a partition over it attaches with `com.microsoft:epoch`; the service
then detaches the previous reader with `amqp:link:stolen`, so two processors never keep
dispatching the same partition. The rules, per hub + consumer group + partition:

- a receiver with an epoch equal to or higher than every present one is admitted and every
  other receiver there (with or without epoch) is detached as stolen;
- a receiver with a lower epoch than a present one is refused;
- a receiver without epoch is refused while an epoch receiver is present, and at most
  `MAX_RECEIVERS` (5) receivers without epoch may share a partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "LINK_STOLEN",
    "MAX_RECEIVERS",
    "QUOTA_EXCEEDED",
    "Admission",
    "Receiver",
    "ReceiverRegistry",
]

MAX_RECEIVERS = 5
LINK_STOLEN = "amqp:link:stolen"
QUOTA_EXCEEDED = "amqp:resource-limit-exceeded"

_Key = tuple[str, str, str]  # hub (case-folded), consumer group (case-folded), partition id


class Receiver(Protocol):
    """A consumer link as the registry sees it."""

    @property
    def epoch(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """The registry's answer: refused (with condition and description) or admitted."""

    admitted: bool
    evicted: tuple[Receiver, ...] = ()
    condition: str = ""
    description: str = ""


@dataclass(slots=True)
class ReceiverRegistry:
    _receivers: dict[_Key, list[Receiver]] = field(default_factory=dict)

    @staticmethod
    def key(hub: str, consumer_group: str, partition_id: str) -> _Key:
        return hub.casefold(), consumer_group.casefold(), partition_id

    def admit(self, key: _Key, receiver: Receiver) -> Admission:
        """Admit `receiver` (evicting those it supersedes) or refuse it."""
        present = self._receivers.setdefault(key, [])
        epochs = [r.epoch for r in present if r.epoch is not None]
        where = f"partition {key[2]} of consumer group {key[1]!r}"
        if receiver.epoch is None:
            if epochs:
                return Admission(
                    False,
                    condition=LINK_STOLEN,
                    description=(
                        f"a receiver with epoch {max(epochs)} owns {where}; receivers without "
                        "epoch cannot attach"
                    ),
                )
            if len(present) >= MAX_RECEIVERS:
                return Admission(
                    False,
                    condition=QUOTA_EXCEEDED,
                    description=f"{where} already has {MAX_RECEIVERS} receivers (the limit)",
                )
            present.append(receiver)
            return Admission(True)
        if epochs and max(epochs) > receiver.epoch:
            return Admission(
                False,
                condition=LINK_STOLEN,
                description=(
                    f"a receiver with higher epoch {max(epochs)} owns {where}; "
                    f"epoch {receiver.epoch} was refused"
                ),
            )
        evicted = tuple(present)
        present[:] = [receiver]
        return Admission(True, evicted=evicted)

    def remove(self, key: _Key, receiver: Receiver) -> None:
        present = self._receivers.get(key)
        if present and receiver in present:
            present.remove(receiver)
            if not present:
                del self._receivers[key]
