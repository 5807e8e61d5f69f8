"""`python -m worker.devhub`: run dev-hub in the foreground.

stdout gets exactly one line, the connection string of the first hub (flushed, so a parent
process can read it as the ready signal); logs go to stderr. SIGTERM or SIGINT stop it with
exit code 0. `main` is reusable by the project's CLI (`aml-event-worker dev-hub`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from worker.devhub.address import DEFAULT_HUB, DEFAULT_PARTITIONS, parse_hub_spec
from worker.devhub.server import DevHub, serve
from worker.errors import ConfigError

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The dev-hub options, for this entry point and for a subcommand of the main CLI."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=5672, help="port to listen on (0 = any free port)"
    )
    parser.add_argument(
        "--hub",
        dest="hubs",
        action="append",
        metavar="NAME[:PARTITIONS]",
        help=(
            f"an event hub to serve (repeatable; default {DEFAULT_HUB}:{DEFAULT_PARTITIONS}, "
            f"{DEFAULT_PARTITIONS} partitions when omitted)"
        ),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep events in this directory across restarts (default: memory only)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def run(args: argparse.Namespace) -> int:
    """Run dev-hub from parsed arguments; returns the exit code."""
    from worker import logs

    logs.configure(args.log_level)
    hubs: dict[str, int] = {}
    try:
        for spec in args.hubs or [DEFAULT_HUB]:
            name, partitions = parse_hub_spec(spec)
            if name.casefold() in (h.casefold() for h in hubs):
                raise ValueError(f"hub {name!r} is given more than once")
            hubs[name] = partitions
    except ValueError as exc:
        print(f"dev-hub: {exc}", file=sys.stderr)
        return 2
    first = next(iter(hubs))

    def ready(hub: DevHub) -> None:
        print(hub.connection_string(first), flush=True)

    try:
        asyncio.run(serve(args.host, args.port, hubs, args.data_dir, ready=ready))
    except KeyboardInterrupt:  # SIGINT before the signal handlers were installed
        return 0
    except ConfigError as exc:
        print(f"dev-hub: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dev-hub: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m worker.devhub") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A local Event Hubs-compatible AMQP server for development and tests.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
