"""From a matched event to the actions it should cause: keys, throttling, rendering.

Everything an executor needs is decided here, before any I/O, so a dry run and a live run
make the same decisions and a backfill reproduces the live worker's idempotency keys.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec

from worker.events import Event, fold_topic, iso_ticks
from worker.jsontext import dumps
from worker.ordering import TICKS_PER_SECOND
from worker.rules import Action, Rule, ThrottlePer
from worker.templates import RenderError, TemplateContext, mask, render_params, template_context

__all__ = [
    "PlannedAction",
    "RenderFailure",
    "Throttler",
    "aml_job_name",
    "idempotency_key",
    "plan_rule",
    "studio_url",
]


def idempotency_key(topic: str, event_id: str, rule: str, action: str) -> str:
    """DESIGN §5: first 32 hex digits of SHA-256 over topic (case-folded), id, rule, action.

    Stable across versions and replicas; backfills rely on reproducing it exactly.
    """
    material = f"{fold_topic(topic)}\n{event_id}\n{rule}\n{action}"
    try:
        data = material.encode()
    except UnicodeEncodeError:
        # A lone surrogate (escaped in the JSON) has no UTF-8: its WTF-8 bytes instead, so
        # the key stays defined and distinct for every id (DESIGN §7).
        data = material.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:32]


def aml_job_name(key: str) -> str:
    """AML job names are `aew-` + the idempotency key (DESIGN §5): a resubmission finds it."""
    return f"aew-{key}"


def studio_url(job_name: str, workspace_id: str) -> str:
    return f"https://ml.azure.com/runs/{job_name}?wsid={quote(workspace_id, safe='/')}"


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One action that should run. `params` are rendered, with secrets still as markers."""

    rule: str
    action: Action
    event: Event
    key: str
    params: Any

    @property
    def late(self) -> bool:
        return self.event.late

    def plan_line(self) -> dict[str, Any]:
        """The dry-run plan's JSON object (DESIGN §6); secrets masked as `***`."""
        event = self.event
        return {
            "rule": self.rule,
            "action": self.action.type,
            "action_index": self.action.index,
            "action_id": self.action.id,
            "event_id": event.id,
            "event_type": event.type,
            "subject": event.subject,
            "topic": event.topic,
            "event_time": iso_ticks(event.time_ticks),
            "idempotency_key": self.key,
            "late": event.late,
            "params": mask(self.params),
            **self._target_facts(),
            "source": event.origin.as_dict(),
        }

    def plan_json(self) -> str:
        """`plan_line()` as one JSON line, exactly as `replay.json_line` writes it."""
        line = self.plan_line()
        if self.action.plain_params:
            try:
                return _encode(line).decode("utf-8") + "\n"
            except (TypeError, ValueError, OverflowError, UnicodeError):
                pass  # e.g. a lone surrogate from an escaped event string: jsontext decides
        return dumps(line) + "\n"

    def _target_facts(self) -> dict[str, Any]:
        """What the target will call it, where the action type fixes that in advance."""
        if self.action.type != "aml_job":
            return {}
        workspace = self.params.get("workspace") or self.event.topic
        name = aml_job_name(self.key)
        return {"job_name": name, "studio_url": studio_url(name, workspace)}

    def __repr__(self) -> str:
        return f"PlannedAction(rule={self.rule!r}, action={self.action.type!r}, key={self.key!r})"


# Byte-identical to json.dumps(ensure_ascii=False, separators=(",", ":")) for strings,
# integers, booleans, nulls, lists and maps (checked by tests), at several times its speed.
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class RenderFailure:
    """A template that could not be rendered for this event: dead-lettered, never a crash."""

    rule: str
    action: Action
    event: Event
    key: str
    error: str

    def dead_letter(self) -> dict[str, Any]:
        return {
            "kind": "render_error",
            "reason": f"rule '{self.rule}' action {self.action.index} ({self.action.type}): "
            f"{self.error}",
            "rule": self.rule,
            "action": self.action.type,
            "action_index": self.action.index,
            "action_id": self.action.id,
            "idempotency_key": self.key,
            "event_id": self.event.id,
            "event_type": self.event.type,
            "subject": self.event.subject,
            "source": self.event.origin.as_dict(),
            "event": self.event.as_received(),
        }


class Throttler:
    """`throttle: {per, at_most, every}` on event time, so replays decide the same.

    A rule firing is admitted if fewer than `at_most` firings of the same rule (or rule and
    object) happened in the `every` before it; windows forget what is older than `every`.
    """

    def __init__(self) -> None:
        # key -> (every in ticks, admitted times); least recently admitted first, so keys
        # whose whole window has passed are dropped from the front: memory stays bounded
        # by the objects that fired within their `every`, not by every object ever seen.
        self._windows: dict[tuple[str, ...], tuple[int, deque[int]]] = {}

    def admit(self, rule: Rule, event: Event, now: int | None = None) -> bool:
        """`now`: the event's clamped time in ticks (`Released.effective`, DESIGN §4), so a
        far-future event cannot hold a window open and stop the clean-up of the others."""
        throttle = rule.throttle
        if throttle is None:
            return True
        key: tuple[str, ...] = (rule.name,)
        if throttle.per is ThrottlePer.OBJECT:
            key = (rule.name, *event.object_key)
        every = round(throttle.every_s * TICKS_PER_SECOND)
        _, window = self._windows.pop(key, (every, deque()))
        self._windows[key] = (every, window)
        if now is None:
            now = event.time_ticks
        while window and window[0] <= now - every:
            window.popleft()
        # Usually every remembered firing is at or before `now` (max runs in C; the count not).
        earlier = len(window) if not window or max(window) <= now else sum(t <= now for t in window)
        admitted = earlier < throttle.at_most
        if admitted:
            window.append(now)
        self._forget(now)
        return admitted

    def _forget(self, now: int) -> None:
        while self._windows:
            oldest = next(iter(self._windows))
            every, window = self._windows[oldest]
            if window and window[-1] > now - every:
                break
            del self._windows[oldest]

    def __len__(self) -> int:
        return len(self._windows)

    def snapshot(self) -> list[list[Any]]:
        return [[list(key), list(times), every] for key, (every, times) in self._windows.items()]

    @classmethod
    def restore(cls, records: list[list[Any]]) -> Throttler:
        throttler = cls()
        for record in records:
            key, times = record[0], record[1]
            every = record[2] if len(record) > 2 else 0  # format 1 had no `every`
            throttler._windows[tuple(key)] = (every, deque(times))
        return throttler


def plan_rule(
    rule: Rule, event: Event, context: Mapping[str, Any] | None = None
) -> list[PlannedAction | RenderFailure]:
    """Render every action of one rule for one (already admitted) event.

    `context` may be shared across the rules an event matches (only `rule` differs), which
    saves wrapping the event's data once per rule.
    """
    if context is None:
        context = template_context(event, rule.name)
    elif type(context) is TemplateContext:
        if context.rule != rule.name:
            context = context.for_rule(rule.name)
    else:
        context = {**context, "rule": rule.name}
    results: list[PlannedAction | RenderFailure] = []
    for action in rule.actions:
        key = idempotency_key(event.topic, event.id, rule.name, action.key_part)
        try:
            params = render_params(action.params, context)
        except RenderError as exc:
            results.append(RenderFailure(rule.name, action, event, key, str(exc)))
            continue
        results.append(PlannedAction(rule.name, action, event, key, params))
    return results
