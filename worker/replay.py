"""Dry-run replay of a JSON-lines file: the plan of DESIGN §6 without touching anything.

The file is one partition and its lines are arrival order. Output is deterministic: the
same input and rules always give a byte-identical plan.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import IO, Any

import structlog

from worker.events import Origin, Rejection
from worker.jsontext import dumps
from worker.pipeline import PartitionPipeline, Step, Summary
from worker.rules import RuleSet

__all__ = ["MAX_LOGGED_REJECTIONS", "dead_letter_for_rejection", "dry_run", "json_line"]

log = structlog.get_logger(__name__)

# One message may hold thousands of invalid elements: each is dead-lettered, but only the
# first few are logged, so a hostile batch cannot flood the logs (DESIGN §7).
MAX_LOGGED_REJECTIONS = 10


def json_line(obj: Any) -> str:
    """One JSON line; any string (a lone surrogate included) survives (DESIGN §7)."""
    return dumps(obj) + "\n"


def dead_letter_for_rejection(rejection: Rejection) -> dict[str, Any]:
    """A rejected body as a dead-letter record, its bytes kept exactly (text or base64)."""
    record: dict[str, Any] = {
        "kind": "invalid_body",
        "reason": rejection.reason,
        "source": rejection.origin.as_dict(),
        "index": rejection.index,
    }
    try:
        record["body"] = rejection.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(rejection.body).decode("ascii")
    return record


def dry_run(
    ruleset: RuleSet,
    messages: Iterable[tuple[bytes, Origin]],
    plan: IO[str],
    dead_letters: IO[str],
    *,
    pipeline: PartitionPipeline | None = None,
) -> Summary:
    """Run messages through one partition pipeline, writing plan lines and dead letters.

    `pipeline` lets a caller (the bench) look at the state while the replay runs.
    """
    pipeline = pipeline or PartitionPipeline(ruleset)
    write_plan = plan.write

    def write(step: Step) -> None:
        for index, rejection in enumerate(step.rejections):
            if index < MAX_LOGGED_REJECTIONS:
                log.warning("invalid_body", where=rejection.describe())
            dead_letters.write(json_line(dead_letter_for_rejection(rejection)))
        if len(step.rejections) > MAX_LOGGED_REJECTIONS:
            log.warning(
                "invalid_bodies_not_logged",
                count=len(step.rejections) - MAX_LOGGED_REJECTIONS,
                where=step.rejections[0].origin.describe(),
                message="more invalid elements in this message: see the dead letters",
            )
        for decision in step.decisions:
            for action in decision.actions:
                write_plan(action.plan_json())
            for failure in decision.failures:
                log.warning(
                    "render_error",
                    rule=failure.rule,
                    event_id=failure.event.id,
                    subject=failure.event.subject,
                    error=failure.error,
                )
                dead_letters.write(json_line(failure.dead_letter()))

    for body, origin in messages:
        write(pipeline.feed(body, origin))
    write(pipeline.finish())
    return pipeline.summary
