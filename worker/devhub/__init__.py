"""dev-hub: a local Event Hubs-compatible AMQP 1.0 server for development and tests.

The unmodified `azure-eventhub` clients (sync and async producers and consumers, the load
balancing `EventHubConsumerClient` with a blob checkpoint store) connect to it with
`connection_string()`. It behaves like Event Hubs wherever a consumer's guarantees depend on
it: partitions, sequence numbers and offsets, start positions, partition-key routing, batches,
receiver epochs, and (with a data dir) durability across restarts. No Azure SDK is imported
here; proton (python-qpid-proton) does the AMQP engine work.
"""

from __future__ import annotations

from worker.devhub.address import (
    DEFAULT_HUB,
    DEFAULT_PARTITIONS,
    connection_string,
    parse_hub_spec,
)
from worker.devhub.server import DevHub, serve

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_PARTITIONS",
    "DevHub",
    "connection_string",
    "parse_hub_spec",
    "serve",
]
