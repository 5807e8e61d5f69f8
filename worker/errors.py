"""The worker's exception hierarchy.

    WorkerError            (retryable: bool)
    ├── RulesError         a rules file is invalid: every problem, each located
    ├── ConfigError        a setting is invalid
    │   └── UnreachableError   the hub or the checkpoint storage cannot be reached at start
    ├── SourceError        an event source cannot be read
    ├── CheckpointError    checkpoints or state cannot be read or written
    └── ActionError        an action failed (retryable says whether to try again)

Bad input *data* is never an exception: a body that is not an event is a
`worker.events.Rejection` and a template that cannot be rendered is a `RenderError` value,
because both are normal outcomes of a stream, not failures of the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ActionError",
    "CheckpointError",
    "ConfigError",
    "Problem",
    "RulesError",
    "SourceError",
    "UnreachableError",
    "WorkerError",
    "exception_summary",
]


class WorkerError(Exception):
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """One located message about a rules file (an error or a warning)."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RulesError(WorkerError):
    """A rules file is invalid; `problems` holds every error found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(WorkerError):
    pass


class UnreachableError(ConfigError):
    """A service the worker needs does not answer at start: what, where, the likely fix.

    `run` exits with its own code (4), so an orchestrator or a person can tell "fix the
    address or the network" from "fix the rules file" (2) at a glance.
    """

    def __init__(self, what: str, where: str, error: BaseException | str, fix: str) -> None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"{what} at {where} is unreachable: {first[:300]}. {fix}")


class SourceError(WorkerError):
    retryable = True


class CheckpointError(WorkerError):
    retryable = True


class ActionError(WorkerError):
    """An action failed. `retryable` says whether another attempt may succeed (a 503, a
    timeout) or not (a 400); `retry_after_s` carries the target's own wish (Retry-After)."""

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def exception_summary(exc: BaseException | str, limit: int = 200) -> str:
    """`Type: first line of its message`, cut to `limit`: what dead letters and logs say of
    an unexpected exception. Never raises, even for an exception that cannot print itself."""
    if isinstance(exc, str):
        return exc
    try:
        text = str(exc)
    except Exception:
        text = ""
    first = text.splitlines()[0][:limit] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"
