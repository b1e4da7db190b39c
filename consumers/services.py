"""What the consumers' handlers get as ``ctx.services``: one frozen, typed ``Services``.

The composition root (``consumers/app.py``, a test's or a benchmark's app) builds it once per process
and hands it to the pipeline, which passes it on untouched; a handler declares what it expects::

    async def subscriptions_send_expiry_reminder_task(
        event: SubscriptionExpiring, ctx: HandlerContext[Services]
    ) -> None:
        settings = ctx.services.subscriptions          # SubscriptionSettings
        await ctx.services.sender.send(...)            # the process's one TelegramSender

Everything has a default except the two adapters that own connections (the sender and
monitoring's Kafka settings and admin chat): a test builds ``Services(clock=..., gamification=...)``
with what its handlers use, and ``Services.from_settings(settings, ...)`` takes every section of a
settings tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from zoneinfo import ZoneInfo

from dianabot_core.clock import Clock, SystemClock
from dianabot_core.domain.settings import (
    ChannelSettings,
    ContentSettings,
    GamificationSettings,
    SubscriptionSettings,
)
from dianabot_core.monitoring_settings import MonitoringSettings
from dianabot_core.schedule.jobs import JobDefinition
from dianabot_core.settings import KafkaSettings, Settings
from dianabot_core.telegram.sender import TelegramSender


@dataclass(frozen=True)
class Retention:
    """How long bookkeeping rows are kept (the daily cleanup job); ``Services(retention=...)``.

    The ledger outlives the longest topic retention (dead letters and alerts: 30 days), so any
    record that can still be redelivered or replayed is still recognised as a duplicate. The
    send ledger is kept as long, for the same reason: it is what stops a replayed notification
    from being sent twice. Broadcast recipients go with their sends (progress joins the two).
    """

    processed_events: timedelta = timedelta(days=35)
    published_outbox: timedelta = timedelta(days=7)
    job_runs: timedelta = timedelta(days=90)
    telegram_sends: timedelta = timedelta(days=35)
    broadcast_recipients: timedelta = timedelta(days=35)
    expired_invite_links: timedelta = timedelta(days=7)
    # Outlives every source topic's retention, so a record that can still be re-read keeps its claim.
    dead_letter_claims: timedelta = timedelta(days=35)
    batch_size: int = 5000
    max_batches: int = 1000


@dataclass(frozen=True)
class Monitoring:
    """What the monitoring jobs and handler need; built once by the composition root."""

    settings: MonitoringSettings
    kafka: KafkaSettings
    admin_chat_id: int
    jobs: tuple[JobDefinition, ...]
    timezone: ZoneInfo


class MissingService(RuntimeError):
    """A handler asked for an adapter its composition root did not provide.

    Not a PermanentError: a wiring mistake must not dead-letter every event; it is retried and
    alerted on like any other failure until the process is fixed.
    """


@dataclass(frozen=True)
class Services:
    """Everything handlers may use besides their unit of work, built once per process."""

    clock: Clock = field(default_factory=SystemClock)
    timezone: tzinfo = UTC
    """The bot's timezone (``DIANABOT_TIMEZONE``): local days and weeks, recurring posts' wall-clock time."""
    subscriptions: SubscriptionSettings = field(default_factory=SubscriptionSettings)
    content: ContentSettings = field(default_factory=ContentSettings)
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    gamification: GamificationSettings = field(default_factory=GamificationSettings)
    retention: Retention = field(default_factory=Retention)
    telegram: TelegramSender | None = None
    """The process's one sender; handlers use ``sender``. None in tests whose handlers send nothing."""
    watching: Monitoring | None = None
    """What monitoring watches; handlers use ``monitoring``. None where no monitoring handler runs."""

    @property
    def sender(self) -> TelegramSender:
        if self.telegram is None:
            raise MissingService("no TelegramSender in the services (Services(telegram=...))")
        return self.telegram

    @property
    def monitoring(self) -> Monitoring:
        if self.watching is None:
            raise MissingService("no Monitoring in the services (Services(watching=...))")
        return self.watching

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        telegram: TelegramSender | None = None,
        watching: Monitoring | None = None,
        retention: Retention | None = None,
    ) -> Services:
        """The services of a settings tree: its timezone and domain sections, and these adapters."""
        return cls(
            clock=clock or SystemClock(),
            timezone=settings.tz,
            subscriptions=settings.subscriptions,
            content=settings.content,
            channels=settings.channels,
            gamification=settings.gamification,
            retention=retention or Retention(),
            telegram=telegram,
            watching=watching,
        )
