"""Action executors: one small interface, one module per action type.

An executor receives a planned action whose parameters are rendered and whose secrets are
already substituted (`params`; `planned.params` still holds the masked form for logs). It
returns a small dict of facts worth logging (a job name, a status code) and raises
`errors.ActionError` when the target refuses: `retryable` decides between another attempt
and the dead-letter store, `retry_after_s` carries the target's Retry-After. Retries,
backoff, the ledger and dead letters are the caller's business (`worker.delivery`), so an
executor makes exactly one attempt.

Which types can run is decided at start-up: a rules file naming a type without an executor
refuses to start instead of silently doing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from worker.plan import PlannedAction

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = ["Executor", "available_executors", "missing_executors", "parse_retry_after"]


class Executor(Protocol):
    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        """Make one attempt; raise ActionError on failure."""

    async def aclose(self) -> None:
        """Release connections (called once at shutdown)."""


def available_executors(settings: Settings) -> dict[str, Executor]:
    """One executor per action type; each module imports its SDK lazily on first use."""
    from worker.actions.adf_pipeline import AdfPipelineExecutor
    from worker.actions.aml_job import AmlJobExecutor
    from worker.actions.email import EmailExecutor
    from worker.actions.eventhub import EventHubExecutor
    from worker.actions.log import LogExecutor
    from worker.actions.webhook import WebhookExecutor

    return {
        "log": LogExecutor(),
        "webhook": WebhookExecutor(settings),
        "email": EmailExecutor(settings),
        "aml_job": AmlJobExecutor(settings),
        "eventhub": EventHubExecutor(settings),
        "adf_pipeline": AdfPipelineExecutor(settings),
    }


def missing_executors(action_types: frozenset[str], executors: Mapping[str, Any]) -> list[str]:
    return sorted(t for t in action_types if t not in executors)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: delay-seconds or an HTTP date; None when absent or invalid."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:  # a peer is untrusted: any date it writes, however absurd, means "no hint"
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
