"""The `log` action: one structured line (`action_log`) at the rule's level (DESIGN §6)."""

from __future__ import annotations

from typing import Any

import structlog

from worker.plan import PlannedAction
from worker.templates import mask

log = structlog.get_logger("worker.actions")


class LogExecutor:
    async def aclose(self) -> None:
        pass

    async def execute(self, planned: PlannedAction, params: Any) -> dict[str, Any] | None:
        # The masked rendering, not `params`: a log line must never carry a secret.
        shown = mask(planned.params)
        event = planned.event
        getattr(log, shown.get("level", "info"))(
            "action_log",
            message=shown["message"],
            rule=planned.rule,
            action_index=planned.action.index,
            idempotency_key=planned.key,
            event_id=event.id,
            subject=event.subject,
            partition_id=event.partition_id,
            sequence_number=event.sequence_number,
            late=event.late,
        )
        return None
