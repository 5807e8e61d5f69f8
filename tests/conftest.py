"""Shared test helpers: sample locations and small event builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.events import Event, Origin, decode_body

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws-demo"
)
RUN_STATUS = "Microsoft.MachineLearningServices.RunStatusChanged"


def eg(
    id: str = "e1",
    *,
    subject: str = "experiments/x/runs/r1",
    type: str = RUN_STATUS,
    time: str = "2024-06-10T10:00:00Z",
    data: Any = None,
    topic: str = TOPIC,
    **extra: Any,
) -> dict[str, Any]:
    """An Event Grid schema event object."""
    return {
        "topic": topic,
        "subject": subject,
        "eventType": type,
        "eventTime": time,
        "id": id,
        "data": {} if data is None else data,
        "dataVersion": "2",
        "metadataVersion": "1",
        **extra,
    }


def ce(
    id: str = "c1",
    *,
    subject: str = "experiments/x/runs/r1",
    type: str = RUN_STATUS,
    time: str | None = "2024-06-10T10:00:00Z",
    data: Any = None,
    source: str = TOPIC,
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured event object."""
    event = {
        "specversion": "1.0",
        "source": source,
        "subject": subject,
        "type": type,
        "id": id,
        "data": {} if data is None else data,
        **extra,
    }
    if time is not None:
        event["time"] = time
    return event


def event_of(obj: dict[str, Any], origin: Origin | None = None) -> Event:
    """Decode one event object, failing the test if it is rejected."""
    events, rejections = decode_body(json.dumps(obj).encode(), origin or Origin())
    assert not rejections, rejections
    assert len(events) == 1
    return events[0]


@pytest.fixture
def shared_samples() -> Path:
    if not (SHARED_SAMPLES / "stream.jsonl").is_file():
        pytest.skip("../shared/samples is not beside this checkout")
    return SHARED_SAMPLES
