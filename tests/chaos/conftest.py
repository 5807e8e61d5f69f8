"""Fixtures of the reliability experiments: an 8-partition hub with a `forward` hub beside
it, an `Env` for worker processes on it, and the recording peers (see `harness`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.harness import ForwardReader, WebhookPeer
from tests.conftest import DevHubProcess
from tests.workers import Env

PARTITIONS = 8


@pytest.fixture
def chaos_hub(tmp_path) -> Iterator[DevHubProcess]:
    """dev-hub with the input hub `aml-events` (8 partitions) and `forward` (4)."""
    hub = DevHubProcess(tmp_path / "hub", hubs=(f"aml-events:{PARTITIONS}", "forward:4"))
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def webhook_peer() -> Iterator[WebhookPeer]:
    """The recording webhook target (answers 202 unless the test scripts `respond`)."""
    with WebhookPeer() as peer:
        yield peer


@pytest.fixture
def forward_reader(chaos_hub) -> Iterator[ForwardReader]:
    """Reads the `forward` hub from the start for the whole test."""
    with ForwardReader(chaos_hub.hub_connection_string("forward")) as reader:
        yield reader


@pytest.fixture
def chaos_env(tmp_path, chaos_hub, azurite, webhook_peer) -> Iterator[Any]:
    """Worker settings on the chaos hub and a fresh container, with the peers' addresses
    (`CHAOS_HOOK_URL`, `CHAOS_FORWARD`) in the environment the rules refer to. Workers
    checkpoint every 0.3 s, so kills land between checkpoints mid-stream."""
    environment = Env(tmp_path, chaos_hub, azurite)
    environment.env.update(
        {
            "CHAOS_HOOK_URL": webhook_peer.url,
            "CHAOS_FORWARD": chaos_hub.hub_connection_string("forward"),
            "AML_WORKER_LOG_LEVEL": "info",
        }
    )
    yield environment
    environment.close()
