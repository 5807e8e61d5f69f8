"""Typed settings from AML_WORKER_* variables; bad values name the variable (DESIGN §6)."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings


def test_defaults_match_the_design(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("AML_WORKER_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert settings.consumer_group == "$Default"
    assert settings.checkpoint_container == "aml-worker"
    assert settings.checkpoint_interval == 5 and settings.shutdown_timeout == 30
    assert settings.load_balancing_interval == 10 and settings.ownership_expiry == 60
    assert settings.start_position == "earliest" and settings.max_inflight == 64
    assert settings.ledger_retention == 7 * 86400
    assert settings.replay_consumer_group == "aml-worker-replay"


def test_environment_durations_and_overrides(monkeypatch):
    monkeypatch.setenv("AML_WORKER_CHECKPOINT_INTERVAL", "500ms")
    monkeypatch.setenv("AML_WORKER_OWNERSHIP_EXPIRY", "3")
    monkeypatch.setenv("AML_WORKER_CONSUMER_GROUP", "from-env")
    monkeypatch.setenv(
        "AML_WORKER_EVENTHUB_CONNECTION_STRING", "Endpoint=sb://x/;SharedAccessKey=k"
    )
    settings = load_settings(consumer_group="from-flag")
    assert settings.checkpoint_interval == 0.5 and settings.ownership_expiry == 3
    assert settings.consumer_group == "from-flag"
    assert "SharedAccessKey" not in repr(settings)  # secrets never print


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AML_WORKER_CHECKPOINT_INTERVAL", "often"),
        ("AML_WORKER_MAX_INFLIGHT", "0"),
        ("AML_WORKER_EVENTHUB_TRANSPORT", "carrier-pigeon"),
        ("AML_WORKER_LOG_LEVEL", "loud"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_config_command_masks_secrets(monkeypatch, capsys):
    import json

    from worker.cli import main

    monkeypatch.setenv(
        "AML_WORKER_EVENTHUB_CONNECTION_STRING", "Endpoint=sb://x/;SharedAccessKey=k1"
    )
    monkeypatch.setenv("AML_WORKER_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("AML_WORKER_CONSUMER_GROUP", "workers")
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["AML_WORKER_EVENTHUB_CONNECTION_STRING"] == "***"
    assert shown["AML_WORKER_SMTP_PASSWORD"] == "***"
    assert shown["AML_WORKER_CONSUMER_GROUP"] == "workers"
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "k1" not in text and "hunter2" not in text and "workers" in text
