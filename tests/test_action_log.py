"""The `log` action as the worker renders it (DESIGN §6, §7): one line whatever the event."""

from __future__ import annotations

import json

import pytest

from tests.conftest import eg
from tests.test_delivery import planned_actions
from worker import logs
from worker.actions.log import LogExecutor
from worker.templates import reveal


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_any_string_logs_as_one_line(capsys, fmt):
    """A lone surrogate and CR/LF from event data: one `action_log` line, even on a stream
    that refuses surrogates (pytest's capture does), never an encoding error or a forged
    line. JSON keeps the exact string (escaped); the console form has U+FFFD and spaces."""
    logs.configure("info", fmt)
    [planned] = planned_actions(
        "{type: log, message: 'run {{ data.x }}', level: warning}",
        eg(subject="s\udc80", data={"x": 'a\udc80\r\n{"event": "forged"}'}),
    )

    await LogExecutor().execute(planned, reveal(planned.params, {}))

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    if fmt == "json":
        entry = json.loads(lines[0])
        assert entry["event"] == "action_log" and entry["level"] == "warning"
        assert entry["message"] == 'run a\udc80\r\n{"event": "forged"}'
        assert entry["subject"] == "s\udc80"
    else:
        assert "action_log" in lines[0] and "subject=s\ufffd" in lines[0]
        assert "a\ufffd " in lines[0]
