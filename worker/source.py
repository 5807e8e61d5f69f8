"""Where message bodies come from. Each source yields (body, origin) in arrival order.

Only the JSON-lines file lives here so far; the Event Hubs and Capture sources join it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from worker.errors import SourceError
from worker.events import Origin

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path, *, partition_id: str = "") -> Iterator[tuple[bytes, Origin]]:
    """One message body per line (a line may be a JSON array batch); blank lines are skipped.

    Lines are read as bytes so that a line that is not UTF-8 is a rejection with its line
    number, not a crash of the whole replay.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            body = line.rstrip(b"\r\n")
            if not body or body.isspace():
                continue
            yield body, Origin(partition_id, line=number)
