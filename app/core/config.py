"""Settings: one pydantic-settings object, read from the environment (prefix CRISISFLOW_)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/crisisflow.db"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse `90s`, `15m`, `6h`, `1d`, `250ms` into seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 6h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRISISFLOW_", env_file=".env", extra="ignore", validate_default=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path (default) or postgresql+psycopg://...",
    )
    timezone: str = Field("Asia/Ho_Chi_Minh", description="Calendar boundaries (years, reports)")
    sla_overrides: str = Field("", description="clock.severity=duration,... (workflow.md)")
    communications_authority: str = Field("MIC", description="Agency receiving every escalation")
    government_office: str = Field("VPCP", description="Agency added at escalation level 2")
    alert_group_by: str = Field("topic", description="Comma-separated grouping labels")
    ingest_rate_limit: float = Field(5000.0, ge=0, description="Alerts/s per key; 0 turns off")
    ingest_burst: int = Field(10000, ge=1, description="Token-bucket burst per key")
    ingest_process: bool | None = Field(
        None, description="`serve` writes alerts in a process of its own beside the API "
                          "processes (false: in each API process; unset: on PostgreSQL "
                          "only)")
    ingest_socket: str | None = Field(
        None, description="Set by `serve` for its API processes: the ingest process's socket")
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    raw_alert_max_bytes: int = Field(16 * 1024, ge=256, description="Raw payload kept per alert")
    worker_poll_seconds: float = Field(0.5, gt=0, le=10)
    delivery_lease_seconds: float = Field(25.0, gt=0, le=300)
    delivery_concurrency: int = Field(16, ge=1, le=256)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=120)
    delivery_retry_window: str = Field("24h", description="How long failing deliveries retry")
    smtp_host: str = Field("localhost")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = Field(False)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field("crisisflow@localhost")
    smtp_timeout_seconds: float = Field(10.0, gt=0)
    log_level: str = Field("INFO")
    log_json: bool = Field(True)
    access_log: bool = Field(True)
    sse_heartbeat_seconds: float = Field(15.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith("postgresql") and not value.startswith("postgresql+psycopg"):
            value = "postgresql+psycopg" + value[len(value.split("://")[0]) :]
        return value

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("sla_overrides")
    @classmethod
    def _check_sla(cls, value: str) -> str:
        from workflows.sla import parse_overrides

        parse_overrides(value)
        return value

    @field_validator("delivery_retry_window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("smtp_username", "smtp_password")
    @classmethod
    def _ascii_credentials(cls, value: Any) -> Any:
        # SMTP AUTH (smtplib) sends credentials as ASCII; anything else would fail every send.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and not str(text).isascii():
            raise ValueError("SMTP credentials must be ASCII")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def group_by(self) -> list[str]:
        return [part.strip() for part in self.alert_group_by.split(",") if part.strip()]

    @property
    def retry_window_seconds(self) -> float:
        return parse_duration(self.delivery_retry_window)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_ingest_process(self) -> bool:
        # On PostgreSQL the writer spends much of each group waiting for the server; in a
        # process of its own that wait no longer stalls HTTP parsing (single-alert ingest
        # 0.26x -> 0.40x of the bare baseline on a 2-core EPYC). SQLite has no such wait:
        # through the extra process its throughput gained on one machine and not on another,
        # where single-alert p99 went 34 -> 53 ms, and two processes would write one file.
        return self.ingest_process if self.ingest_process is not None else not self.is_sqlite


class SettingsError(Exception):
    """A setting has a bad value; the message names it as an environment variable."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = "CRISISFLOW_" + "_".join(str(p) for p in err["loc"]).upper()
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid setting {name}: {msg}")
    return "\n".join(lines)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
