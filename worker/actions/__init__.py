"""Action executors: one small interface, one module per action type.

An executor receives a planned action whose parameters are rendered and whose secrets are
already substituted; it raises `errors.ActionError` (with `retryable`) when the target
refuses. Which types can run is decided at start-up: a rules file naming a type without an
executor refuses to start instead of silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from worker.plan import PlannedAction

__all__ = ["Executor", "available_executors", "missing_executors"]


class Executor(Protocol):
    async def execute(self, planned: PlannedAction, params: Any) -> None:
        """Perform the action; `params` are rendered with secrets revealed."""


def available_executors() -> dict[str, Executor]:
    from worker.actions.log import LogExecutor

    return {"log": LogExecutor()}


def missing_executors(action_types: frozenset[str], executors: Mapping[str, Any]) -> list[str]:
    return sorted(t for t in action_types if t not in executors)
