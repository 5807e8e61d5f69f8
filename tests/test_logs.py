"""Log configuration: JSON lines on stderr, secrets redacted before rendering (DESIGN §6)."""

from __future__ import annotations

import json

import structlog

from worker import logs


def test_redaction_processor_masks_secret_fields():
    event = {
        "event": "x",
        "connection_string": "Endpoint=sb://a/;SharedAccessKey=k",
        "smtp_password": "hunter2",
        "sas_token": "sv=1&sig=abc",
        "idempotency_key": "0123abcd",
        "partition_key": "runs/1",
        "subject": "runs/1",
    }
    out = logs.redact(None, "info", dict(event))
    assert out["connection_string"] == out["smtp_password"] == out["sas_token"] == "***"
    assert out["idempotency_key"] == "0123abcd" and out["partition_key"] == "runs/1"
    assert out["subject"] == "runs/1"


def test_json_lines_go_to_stderr_with_context_and_redaction(capsys):
    logs.configure("info", "json")
    log = structlog.get_logger("t")
    with structlog.contextvars.bound_contextvars(partition_id="2", event_id="e1"):
        log.info("action_done", rule="r", password="p4ss")
    log.debug("hidden")
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    record = json.loads(line)
    assert record["event"] == "action_done" and record["partition_id"] == "2"
    assert record["event_id"] == "e1" and record["password"] == "***"
    assert record["level"] == "info" and "timestamp" in record
