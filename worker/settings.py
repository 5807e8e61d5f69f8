"""All settings in one typed object: `AML_WORKER_*` environment variables and `.env`.

Built once by the CLI (flags override) and passed down; nothing else reads the environment
for configuration (DESIGN §6). Secrets are `SecretStr`, so they print as `**********`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.durations import parse_duration
from worker.errors import ConfigError

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AML_WORKER_", env_file=".env", extra="ignore", validate_default=True
    )

    eventhub_connection_string: SecretStr | None = None
    eventhub_namespace: str | None = None
    eventhub_name: str | None = None
    consumer_group: str = "$Default"
    checkpoint_store_connection_string: SecretStr | None = None
    checkpoint_store_url: str | None = None
    checkpoint_container: str = "aml-worker"
    create_container: bool = False
    rules: Path | None = None
    # Folders (os.pathsep-separated) an action's files (`job:`) may be in besides the rules
    # file's own; rules.split_job_roots splits it, load_rules(job_roots=...) takes the list.
    job_roots: str | None = None
    checkpoint_interval: float = 5.0
    start_position: str = "earliest"
    shutdown_timeout: float = 30.0
    max_inflight: int = Field(64, ge=1)
    http_port: str = "8080"  # a port, 0 = any free port (logged), or "off"
    http_host: str = "0.0.0.0"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] | None = None
    load_balancing_interval: float = 10.0
    ownership_expiry: float = 60.0
    stall_timeout: float = 60.0  # a partition with unread events that delivers nothing this long
    replay_consumer_group: str = "aml-worker-replay"
    eventhub_transport: Literal["amqp", "websocket"] = "amqp"
    ledger_retention: float = 7 * 86_400.0
    smtp_host: str | None = None
    smtp_port: int | None = None  # default: 587 (starttls), 465 (tls), 25 (none)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout: float = 30.0
    azure_cloud: Literal["AzureCloud", "AzureUSGovernment", "AzureChinaCloud"] = "AzureCloud"

    @field_validator(
        "checkpoint_interval",
        "shutdown_timeout",
        "load_balancing_interval",
        "ownership_expiry",
        "stall_timeout",
        "ledger_retention",
        "smtp_timeout",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with CLI overrides; a ConfigError names the variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "AML_WORKER_" + "_".join(str(p) for p in error["loc"]).upper()
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
