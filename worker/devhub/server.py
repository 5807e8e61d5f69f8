"""`DevHub` (start, stop, connection string) and `serve` (run until a signal).

Why its own module: this is the public face the tests, the CLI and other code use; the
protocol work lives in `connection.py` and `links.py`, the data in `store.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from worker.devhub.address import DEFAULT_HUB, DEFAULT_PARTITIONS, check_hub, connection_string
from worker.devhub.connection import Connection
from worker.devhub.ownership import ReceiverRegistry
from worker.devhub.store import Store

__all__ = ["DevHub", "serve"]

log = structlog.get_logger(__name__)

_CONNECT_HOST = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "localhost"}


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
        for name, partitions in self.hubs.items():
            check_hub(name, partitions)
        self.data_dir = data_dir
        self.store = Store(self.hubs, data_dir)
        self.registry = ReceiverRegistry()
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._port

    def connection_string(self, hub: str | None = None) -> str:
        """The clients' connection string (a wildcard listen address becomes loopback)."""
        host = _CONNECT_HOST.get(self.host, self.host)
        return connection_string(host, self._port, hub)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("dev-hub is already started")
        self.store = Store(self.hubs, self.data_dir)
        self.registry = ReceiverRegistry()
        self.store.open()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: Connection(self), self.host, self._port)
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

    def freeze_receivers(self) -> int:
        """Fault injection (SIGUSR1 on `serve`): every partition reader attached now stops
        delivering without detaching; readers attached later work. Returns how many froze."""
        frozen = sum(conn.freeze_receivers() for conn in self.connections)
        log.warning("devhub_receivers_frozen", receivers=frozen)
        return frozen

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
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGUSR1, hub.freeze_receivers)
            installed.append(signal.SIGUSR1)
        try:
            if ready is not None:
                ready(hub)
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
