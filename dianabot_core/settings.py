"""One settings tree for every process, read from the environment and `.env`.

Variables are prefixed ``DIANABOT_`` and nested with ``__``, e.g.
``DIANABOT_KAFKA__BOOTSTRAP_SERVERS`` or ``DIANABOT_SENDER__GLOBAL_RATE_PER_S``: every section (the
infrastructure's here, the others beside the code they configure) is a field of the root ``Settings``.
Secrets are ``SecretStr`` so they never show up in reprs, logs, tracebacks or configuration errors.

``load_settings`` reads the whole tree; ``load_section`` one section and ``load_tool_settings`` every
section but Telegram (tools that need no bot token). All stop at a variable the tree does not know (a
typo must not pass silently) and report every problem in one line naming the variables, never their
values. The README's settings table is printed from this tree by ``python -m dianabot_core.settings_table``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError
from sqlalchemy.engine import make_url

from dianabot_core.config import ENV_NESTED_DELIMITER, ENV_PREFIX, ConfigError, Section
from dianabot_core.domain.settings import (
    ChannelSettings,
    ContentSettings,
    GamificationSettings,
    SubscriptionSettings,
)
from dianabot_core.monitoring_settings import MonitoringSettings
from dianabot_core.schedule.settings import SchedulerSettings
from dianabot_core.telegram.settings import SenderSettings

__all__ = [
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "ConfigError",
    "DatabaseSettings",
    "KafkaSettings",
    "Settings",
    "TelegramSettings",
    "TelemetrySettings",
    "ToolSettings",
    "describe_validation_error",
    "load_database_settings",
    "load_section",
    "load_settings",
    "load_tool_settings",
]

ENV_FILE = ".env"
# DIANABOT_ variables that are not settings: the tests' and benchmarks' (DIANABOT_TEST_DATABASE_URL...).
RESERVED_PREFIXES = (f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_")


class KafkaSettings(Section):
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
    group_instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="Static group membership: a stable name for this consumers process, unique among "
        "live ones (a StatefulSet pod name, `consumers-1`). Restarted under the same name within "
        "session_timeout_ms, it takes its partitions back with no rebalance of the other processes' "
        "groups; unset, every restart rebalances every group twice. With it set, a stopped process's "
        "partitions wait session_timeout_ms before they move (it does not leave its groups).",
    )
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


class DatabaseSettings(Section):
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


class TelegramSettings(Section):
    bot_token: SecretStr = Field(description="Bot API token from @BotFather.")
    api_base_url: str = Field(
        "https://api.telegram.org",
        description="Bot API server; point it at the local double (dianabot_double) for tests and demos.",
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


class TelemetrySettings(Section):
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


class _TreeSource(BaseSettings):
    """Where the tree is read from: the environment, then ``.env`` (the environment wins)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=ENV_FILE,
        # Unknown names are reported by `_refuse_unknown_variables`, by their real names; pydantic-settings
        # would report a `.env` one with the prefix doubled.
        extra="ignore",
        frozen=True,
    )


class ToolSettings(_TreeSource):
    """The tree without its Telegram section, for operator tools that send nothing (``dianabot jobs``):
    they must not ask for a bot token they would not use. ``Settings`` is this plus ``telegram``."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    timezone: str = Field("Europe/Madrid", description="The bot's local timezone (IANA name) for schedules.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    sender: SenderSettings = Field(default_factory=SenderSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    subscriptions: SubscriptionSettings = Field(default_factory=SubscriptionSettings)
    content: ContentSettings = Field(default_factory=ContentSettings)
    channels: ChannelSettings = Field(default_factory=ChannelSettings)
    gamification: GamificationSettings = Field(default_factory=GamificationSettings)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Settings(ToolSettings):
    """The whole configuration of the job service: one field per section."""

    telegram: TelegramSettings


# --- reading ------------------------------------------------------------------------------------

SectionT = TypeVar("SectionT", bound=BaseModel)


def load_settings(**overrides: Any) -> Settings:
    """Read the whole tree once; any problem becomes a one-line ConfigError."""
    _refuse_unknown_variables()
    return _validated(Settings, overrides)


def load_section(section: type[SectionT]) -> SectionT:
    """Read one section of the tree (environment and ``.env``) without the others, e.g. the database
    URL for migrations or Kafka for the operator CLI, which need no bot token."""
    name = _section_field(section)
    only: type[_TreeSource] = create_model(  # type: ignore[call-overload]
        f"{section.__name__}Only", __base__=_TreeSource, **{name: (section, Settings.model_fields[name])}
    )
    _refuse_unknown_variables()
    value = getattr(_validated(only, {}), name)
    assert isinstance(value, section)
    return value


def load_database_settings() -> DatabaseSettings:
    return load_section(DatabaseSettings)


def load_tool_settings() -> ToolSettings:
    """Every section but Telegram (``ToolSettings``): what ``dianabot jobs`` reads, with no bot token."""
    _refuse_unknown_variables()
    return _validated(ToolSettings, {})


def _section_field(section: type[BaseModel]) -> str:
    for name, field in Settings.model_fields.items():
        if field.annotation is section:
            return name
    raise ValueError(f"{section.__name__} is not a section of the settings tree")


TreeT = TypeVar("TreeT", bound=_TreeSource)


def _validated(model: type[TreeT], overrides: Mapping[str, Any]) -> TreeT:
    try:
        return model(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, model)) from None
    except SettingsError as error:  # a value that must be JSON (a list, a mapping) is not
        raise ConfigError(f"invalid configuration: {_unparsable(error)}") from None


# --- unknown variables --------------------------------------------------------------------------


def _variables() -> list[tuple[str, str | None, str]]:
    """Every variable the tree may read: (name, value, where it is set); the environment first."""
    found: list[tuple[str, str | None, str]] = [(k, v, "environment") for k, v in os.environ.items()]
    if Path(ENV_FILE).is_file():
        found += [(k, v, ENV_FILE) for k, v in dotenv_values(ENV_FILE).items()]
    return found


def _refuse_unknown_variables() -> None:
    unknown = {name.upper(): where for name, _, where in _variables() if not is_known_variable(name)}
    if unknown:
        problems = [f"{name}: unknown variable (in the {where})" for name, where in sorted(unknown.items())]
        raise ConfigError("invalid configuration: " + "; ".join(problems))


def is_known_variable(name: str) -> bool:
    """False for a ``DIANABOT_`` name that addresses nothing in the tree; True for any other name."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper.startswith(RESERVED_PREFIXES):
        return True
    return _addresses(Settings, _path(upper))


def _addresses(model: type[BaseModel], path: list[str]) -> bool:
    return _annotation_at(model, path) is not _NOWHERE


_NOWHERE = object()


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The type a variable's path (``["sender", "late_slot_s"]``) sets in the tree, or ``_NOWHERE``."""
    field = model.model_fields.get(path[0])
    if field is None:
        return _NOWHERE
    return _value_at(str if NoDecode in field.metadata else field.annotation, path[1:])


def _value_at(annotation: Any, path: list[str]) -> Any:
    if not path:
        return annotation
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return _annotation_at(option, path)
        if get_origin(option) in (dict, Mapping):  # the next part is a key: a job name, a group...
            return _value_at(get_args(option)[1], path[1:])
    return _NOWHERE


def _options(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation allows: ``X | None`` is X (and None), ``Annotated[X, ...]`` is X."""
    if get_origin(annotation) in (Union, UnionType):
        return tuple(o for a in get_args(annotation) if a is not type(None) for o in _options(a))
    if get_origin(annotation) is Annotated:  # NoDecode: read as text (comma-separated job names)
        base, *metadata = get_args(annotation)
        return (str,) if NoDecode in metadata else _options(base)
    return (annotation,)


# --- one line per problem -----------------------------------------------------------------------


def env_name(loc: Iterable[int | str]) -> str:
    """The variable of a place in the tree: ("sender", "late_slot_s") -> DIANABOT_SENDER__LATE_SLOT_S."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in loc).upper()


def _missing_names(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """A whole missing section is reported as its required variables, which is what to set."""
    annotation: Any = model
    for part in loc:
        fields = (
            annotation.model_fields
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else {}
        )
        field = fields.get(str(part))
        if field is None:
            return [env_name(loc)]
        annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [env_name((*loc, name)) for name, f in annotation.model_fields.items() if f.is_required()]
    return [env_name(loc)]


def describe_validation_error(error: ValidationError, model: type[BaseModel] = Settings) -> str:
    """One line naming each bad setting by its environment variable, never echoing its value."""
    problems: list[str] = []
    for e in error.errors(include_input=False, include_url=False):
        if e["type"] == "missing":
            problems += [f"{name}: is required" for name in _missing_names(model, e["loc"])]
        else:
            problems.append(f"{env_name(e['loc'])}: {e['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def _unparsable(error: SettingsError) -> str:
    """pydantic-settings names the section whose value it could not parse; find the variable."""
    field = re.search(r'field "(\w+)"', str(error))
    section = field.group(1) if field else ""
    names = sorted(
        {
            name.upper()
            for name, value, _ in _variables()
            if value and _path(name)[:1] == [section] and _needs_json(_path(name)) and not _is_json(value)
        }
    )
    where = ", ".join(names) or f"{env_name([section])}{ENV_NESTED_DELIMITER}*"
    return f"{where}: not valid JSON (lists and mappings are written as JSON)"


def _path(name: str) -> list[str]:
    return name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER.lower())


def _needs_json(path: list[str]) -> bool:
    options = _options(_annotation_at(Settings, path))
    return any(
        get_origin(o) in (list, tuple, set, frozenset, dict, Mapping)
        or (isinstance(o, type) and issubclass(o, BaseModel))
        for o in options
    )


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True
