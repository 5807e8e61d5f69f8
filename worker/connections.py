"""Building the Azure clients from settings: the one place that knows about credentials.

Connection strings win over namespace/URL + DefaultAzureCredential. Errors are turned into
`ConfigError`s that name the setting, so a typo fails at start with a plain message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

from worker.errors import ConfigError
from worker.settings import Settings

__all__ = [
    "AUTHORITY_HOSTS",
    "blob_container",
    "checkpoint_store",
    "consumer_client",
    "default_credential",
    "partition_store",
    "producer_client",
]


def _transport_kwargs(settings: Settings) -> dict[str, Any]:
    from azure.eventhub import TransportType

    if settings.eventhub_transport != "websocket":
        return {}
    kwargs: dict[str, Any] = {"transport_type": TransportType.AmqpOverWebsocket}
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        kwargs["http_proxy"] = {
            "proxy_hostname": parsed.hostname,
            "proxy_port": parsed.port or 8080,
            **({"username": parsed.username} if parsed.username else {}),
            **({"password": parsed.password} if parsed.password else {}),
        }
    return kwargs


AUTHORITY_HOSTS = {
    "AzureUSGovernment": "login.microsoftonline.us",
    "AzureChinaCloud": "login.chinacloudapi.cn",
}


def default_credential(settings: Any, *, aio: bool = True) -> Any:
    """DefaultAzureCredential signing in at the authority of `AML_WORKER_AZURE_CLOUD`.

    The one place that knows sovereign clouds' sign-in hosts; `aio=False` for the
    synchronous SDKs (azure-ai-ml)."""
    if aio:
        from azure.identity.aio import DefaultAzureCredential
    else:
        from azure.identity import DefaultAzureCredential  # type: ignore[assignment]
    authority = AUTHORITY_HOSTS.get(getattr(settings, "azure_cloud", "AzureCloud"))
    return DefaultAzureCredential(authority=authority) if authority else DefaultAzureCredential()


def consumer_client(
    settings: Settings, *, consumer_group: str, checkpoint_store: Any = None
) -> Any:
    from azure.eventhub.aio import EventHubConsumerClient

    kwargs: dict[str, Any] = {
        "consumer_group": consumer_group,
        "load_balancing_interval": settings.load_balancing_interval,
        "partition_ownership_expiration_interval": settings.ownership_expiry,
        **_transport_kwargs(settings),
    }
    if checkpoint_store is not None:
        kwargs["checkpoint_store"] = checkpoint_store
    if settings.eventhub_connection_string is not None:
        conn = settings.eventhub_connection_string.get_secret_value()
        if settings.eventhub_name:
            kwargs["eventhub_name"] = settings.eventhub_name
        try:
            return EventHubConsumerClient.from_connection_string(conn, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"AML_WORKER_EVENTHUB_CONNECTION_STRING is invalid: {exc}") from None
    if settings.eventhub_namespace and settings.eventhub_name:
        return EventHubConsumerClient(
            settings.eventhub_namespace,
            settings.eventhub_name,
            default_credential(settings),
            **kwargs,
        )
    raise ConfigError(
        "no Event Hub configured: set AML_WORKER_EVENTHUB_CONNECTION_STRING (with EntityPath) "
        "or AML_WORKER_EVENTHUB_NAMESPACE and AML_WORKER_EVENTHUB_NAME"
    )


def producer_client(settings: Settings, connection_string: str | None = None) -> Any:
    from azure.eventhub.aio import EventHubProducerClient

    conn = connection_string or (
        settings.eventhub_connection_string.get_secret_value()
        if settings.eventhub_connection_string
        else None
    )
    kwargs = _transport_kwargs(settings)
    if conn:
        try:
            return EventHubProducerClient.from_connection_string(
                conn,
                **({"eventhub_name": settings.eventhub_name} if settings.eventhub_name else {}),
                **kwargs,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Event Hubs connection string: {exc}") from None
    if settings.eventhub_namespace and settings.eventhub_name:
        return EventHubProducerClient(
            settings.eventhub_namespace,
            settings.eventhub_name,
            default_credential(settings),
            **kwargs,
        )
    raise ConfigError("no Event Hub configured (connection string or namespace + name)")


# The storage SDK's default retries (15 s initial backoff, 3 retries) make one failing call
# take over a minute: a partition then waits inside a save, and readiness cannot say why.
# Fail within seconds instead; every caller retries on its own schedule (saves next interval,
# dead letters and ledger entries until they land).
STORAGE_RETRY = {
    "retry_total": 2,
    "initial_backoff": 1,
    "increment_base": 2,
    "connection_timeout": 5,
}


def blob_container(settings: Settings) -> Any:
    from azure.storage.blob.aio import ContainerClient

    container = settings.checkpoint_container
    if settings.checkpoint_store_connection_string is not None:
        conn = settings.checkpoint_store_connection_string.get_secret_value()
        try:
            return ContainerClient.from_connection_string(conn, container, **STORAGE_RETRY)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING is invalid: {exc}"
            ) from None
    if settings.checkpoint_store_url:
        return ContainerClient(
            settings.checkpoint_store_url, container, default_credential(settings), **STORAGE_RETRY
        )
    raise ConfigError(
        "no checkpoint storage configured: set AML_WORKER_CHECKPOINT_STORE_CONNECTION_STRING "
        "or AML_WORKER_CHECKPOINT_STORE_URL"
    )


def checkpoint_store(settings: Settings) -> Any:
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

    container = settings.checkpoint_container
    if settings.checkpoint_store_connection_string is not None:
        conn = settings.checkpoint_store_connection_string.get_secret_value()
        return BlobCheckpointStore.from_connection_string(conn, container, **STORAGE_RETRY)
    assert settings.checkpoint_store_url
    return BlobCheckpointStore(
        settings.checkpoint_store_url, container, default_credential(settings), **STORAGE_RETRY
    )


@contextlib.asynccontextmanager
async def partition_store(
    settings: Settings, *, checkpoints: bool = True
) -> AsyncIterator[tuple[Any, Any]]:
    """(consumer client, BlobPartitionStore) of the configured consumer group, for the tools
    (`checkpoints`, `deadletter`, `history`); blob names follow the SDK's naming."""
    from worker.checkpoints import BlobPartitionStore

    client = consumer_client(settings, consumer_group=settings.consumer_group)
    container = blob_container(settings)
    sdk = checkpoint_store(settings) if checkpoints else None
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(client)
        await stack.enter_async_context(container)
        if sdk is not None:
            await stack.enter_async_context(sdk)
        yield (
            client,
            BlobPartitionStore(
                container,
                sdk,
                fully_qualified_namespace=client._address.hostname,  # as the SDK names blobs
                eventhub_name=client.eventhub_name,
                consumer_group=settings.consumer_group,
            ),
        )
