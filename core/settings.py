"""One settings root for every process, read from the environment and `.env`.

Variables are prefixed ``DIANABOT_`` and nested with ``__``, e.g.
``DIANABOT_KAFKA__BOOTSTRAP_SERVERS`` or ``DIANABOT_TELEGRAM__BOT_TOKEN``.
Secrets are ``SecretStr`` so they never show up in reprs, logs or tracebacks.
"""

from __future__ import annotations

from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

ENV_PREFIX = "DIANABOT_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(Exception):
    """The configuration cannot be used; the message is one readable line without secret values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    client_id: str = Field("dianabot-jobs", description="Client id shown in broker logs and metrics.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_cafile: str | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    connect_timeout_s: float = Field(10.0, gt=0, description="How long start-up waits for the broker.")
    session_timeout_ms: int = Field(
        10_000,
        ge=6_000,
        description="How soon the group notices a dead consumer and hands its partitions on.",
    )
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Consumer heartbeat period.")
    topic_replication_factor: int = Field(1, ge=1, description="Replication of topics declared at start-up.")
    max_record_bytes: int = Field(
        1_048_576,
        ge=16_384,
        description="Largest record the producer sends (aiokafka's max_request_size; Kafka's default "
        "message.max.bytes is 1,048,588). An outbox row whose record is larger is parked, not sent.",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _has_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value


class DatabaseSettings(_Section):
    url: SecretStr = Field(
        SecretStr("postgresql+asyncpg://dianabot:dianabot@127.0.0.1:5432/dianabot"),
        description="SQLAlchemy URL of the service's PostgreSQL database (asyncpg driver).",
    )
    pool_size: int = Field(10, ge=1, description="Connections kept open per process.")
    max_overflow: int = Field(5, ge=0, description="Extra connections allowed under load.")
    statement_timeout_ms: int = Field(30_000, ge=0, description="Server-side limit per SQL statement.")

    @field_validator("url")
    @classmethod
    def _is_postgres_url(cls, value: SecretStr) -> SecretStr:
        try:
            url = make_url(value.get_secret_value())
        except Exception:  # the parser's message would echo the password
            raise ValueError("not a valid database URL") from None
        if url.get_backend_name() != "postgresql":
            raise ValueError("must be a postgresql+asyncpg:// URL")
        return value

    def safe_url(self) -> str:
        """The URL with its password hidden, for logs."""
        return make_url(self.url.get_secret_value()).render_as_string(hide_password=True)


class TelegramSettings(_Section):
    bot_token: SecretStr = Field(description="Bot API token from @BotFather.")
    api_base_url: str = Field(
        "https://api.telegram.org",
        description="Bot API server; point it at the local double (devstack) for tests and demos.",
    )
    admin_chat_id: int = Field(description="Chat that receives alerts.")
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Bot API call.")

    @field_validator("bot_token")
    @classmethod
    def _looks_like_token(cls, value: SecretStr) -> SecretStr:
        bot_id, _, secret = value.get_secret_value().partition(":")
        if not bot_id.isdigit() or not secret:
            raise ValueError("expected the form <bot id>:<secret>")
        return value


class TelemetrySettings(_Section):
    service_name: str = Field("dianabot-jobs", description="service.name resource attribute.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces; unset = no export.",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded (a sampled parent is always followed)."
    )
    http_port: int = Field(
        9464, ge=0, le=65535, description="Port of /livez, /readyz and /metrics; 0 turns the server off."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="JSON log lines (set false for human-readable lines).")


def _known_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r}") from None
    return value


class Settings(BaseSettings):
    """The whole configuration of the job service."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telegram: TelegramSettings
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    timezone: str = Field("Europe/Madrid", description="The bot's local timezone (IANA name) for schedules.")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return _known_timezone(value)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in loc).upper()


def _missing_names(loc: tuple[int | str, ...]) -> list[str]:
    """A whole missing section is reported as its required variables, which is what to set."""
    field = Settings.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    section = field.annotation if field else None
    if isinstance(section, type) and issubclass(section, BaseModel):
        return [_env_name((*loc, name)) for name, f in section.model_fields.items() if f.is_required()]
    return [_env_name(loc)]


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad setting by its environment variable, never echoing its value."""
    problems: list[str] = []
    for e in error.errors(include_input=False, include_url=False):
        if e["type"] == "missing":
            problems += [f"{name}: is required" for name in _missing_names(e["loc"])]
        else:
            problems.append(f"{_env_name(e['loc'])}: {e['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once, turning validation errors into a one-line ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


class _DatabaseOnly(BaseSettings):
    """Just the database section, for tools (migrations) that must not need a bot token."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, env_file=".env", extra="ignore"
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)


def load_database_settings() -> DatabaseSettings:
    try:
        return _DatabaseOnly().database
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


class ToolSettings(BaseSettings):
    """Every section but Telegram, for operator tools that send nothing (``dianabot jobs``): they
    must not ask for a bot token they would not use."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    timezone: str = Field("Europe/Madrid", description="The bot's local timezone (IANA name) for schedules.")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return _known_timezone(value)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_tool_settings() -> ToolSettings:
    try:
        return ToolSettings()
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None
