"""The `eventhub` action: forward the event (or a templated body) to another Event Hub.

The partition key defaults to the subject so that per-object order is kept downstream. Each
message carries the idempotency key as an application property, so a downstream consumer
can dedupe too; on our side the action is ledger-protected (see `worker.delivery`).

Tracing: the send runs under the action's span, so with azure-core's OpenTelemetry plugin on
(`worker.tracing` switches it on) the SDK itself stamps each message with `traceparent` and
`Diagnostic-Id` of its "EventHubs.message" span, a child of the action span — we add nothing,
or the SDK's values would be doubled. Without the plugin we stamp the action span's context.
"""

from __future__ import annotations

from typing import Any

from worker import tracing
from worker.errors import ActionError
from worker.jsontext import dumps_bytes, text_bytes, utf8_safe
from worker.plan import PlannedAction
from worker.settings import Settings

__all__ = ["EventHubExecutor"]

IDEMPOTENCY_PROPERTY = "aml-worker-idempotency-key"


def _amqp_value(value: Any) -> Any:
    """A property value AMQP can encode whatever strings it holds (at any depth)."""
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, dict):
        return {_amqp_value(k): _amqp_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_amqp_value(v) for v in value]
    return value


class EventHubExecutor:
    def __init__(self, settings: Settings, *, credential: Any = None) -> None:
        self.settings = settings
        self._credential = credential
        self._producers: dict[tuple[str, ...], Any] = {}

    async def aclose(self) -> None:
        for producer in self._producers.values():
            await producer.close()
        self._producers.clear()

    def _producer(self, params: dict[str, Any]) -> Any:
        from azure.eventhub.aio import EventHubProducerClient

        if params.get("connection_string"):
            key: tuple[str, ...] = ("cs", params["connection_string"], params.get("eventhub", ""))
        else:
            key = ("ns", params["namespace"], params["eventhub"])
        producer = self._producers.get(key)
        if producer is not None:
            return producer
        try:
            if key[0] == "cs":
                producer = EventHubProducerClient.from_connection_string(
                    params["connection_string"],
                    **({"eventhub_name": params["eventhub"]} if params.get("eventhub") else {}),
                )
            else:
                if self._credential is None:
                    from worker.connections import default_credential

                    self._credential = default_credential(self.settings)
                producer = EventHubProducerClient(
                    params["namespace"], params["eventhub"], self._credential
                )
        except (ValueError, TypeError) as exc:
            # Never echo the connection string: it carries the key.
            raise ActionError(
                f"eventhub action: invalid target ({type(exc).__name__})", retryable=False
            ) from None
        self._producers[key] = producer
        return producer

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        from azure.eventhub import EventData
        from azure.eventhub.exceptions import (
            AuthenticationError,
            ConnectError,
            EventDataSendError,
            EventHubError,
            OperationTimeoutError,
        )

        # Any string survives (DESIGN §7): JSON keeps a lone surrogate as its escape, and
        # AMQP strings (a property, the partition key) get U+FFFD instead.
        body = params.get("body")
        if body is None:
            payload = dumps_bytes(planned.event.as_received())
        elif isinstance(body, str):
            payload = text_bytes(body)
        else:
            payload = dumps_bytes(body)
        partition_key = params.get("partition_key", planned.event.subject) or None
        if partition_key is not None:
            partition_key = utf8_safe(str(partition_key))
        properties = {
            utf8_safe(str(k)): _amqp_value(v) for k, v in (params.get("properties") or {}).items()
        }
        properties[IDEMPOTENCY_PROPERTY] = planned.key
        if tracing.enabled() and not tracing.azure_sdk_traced():
            properties.update(tracing.message_properties())
        producer = self._producer(params)
        try:
            batch = await producer.create_batch(partition_key=partition_key)
            event = EventData(payload)
            event.properties = properties
            batch.add(event)
            await producer.send_batch(batch)
        except ValueError as exc:  # too large for one message: no retry helps
            raise ActionError(f"eventhub action: {exc}", retryable=False) from None
        except AuthenticationError as exc:
            raise ActionError(
                f"eventhub action: not authorized ({exc.message})", retryable=False
            ) from None
        except (ConnectError, OperationTimeoutError, EventDataSendError, EventHubError) as exc:
            raise ActionError(f"eventhub action: {type(exc).__name__}: {exc.message}") from None
        return {"eventhub": producer.eventhub_name, "partition_key": partition_key}
