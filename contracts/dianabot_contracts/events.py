"""Payloads of every event the job service consumes or emits, one frozen model per event type.

Bot services build a payload and wrap it: ``EventEnvelope.wrap(SubscriptionStarted(...), producer="bot")``.
Consumers ignore unknown fields, so producers may add fields without breaking them; a change that
breaks producers of a published version (docs/schemas) needs a higher ``schema_version`` and an
upcaster from the old one, registered here beside the model (docs/README.md, evolving a contract).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from dianabot_contracts.envelope import EventPayload


class Priority(StrEnum):
    """Critical messages (payments, subscriptions, kicks, alerts) always go before bulk ones."""

    CRITICAL = "critical"
    BULK = "bulk"


class Button(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    text: str = Field(min_length=1, max_length=64)
    url: str | None = None
    callback_data: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _one_action(self) -> Button:
        if (self.url is None) == (self.callback_data is None):
            raise ValueError("a button needs exactly one of url or callback_data")
        return self


class Media(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["photo", "video", "animation", "document"]
    file: str = Field(description="A Telegram file_id or an HTTPS URL.")


class MessageContent(BaseModel):
    """What a message shows: text (or a caption when media is present), media, and buttons."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    text: str | None = Field(None, max_length=4096)
    media: tuple[Media, ...] = ()
    buttons: tuple[tuple[Button, ...], ...] = ()
    protect_content: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> MessageContent:
        if not self.text and not self.media:
            raise ValueError("content needs text or media")
        return self


def _user_key(user_id: int) -> str:
    return f"user:{user_id}"


class _UserEvent(EventPayload):
    user_id: int = Field(description="The user's id in the bot's database (users.id).")

    def aggregate_key(self) -> str:
        return _user_key(self.user_id)


# --- users ---------------------------------------------------------------------------------------


class UserRegistered(_UserEvent):
    event_type: ClassVar[str] = "user.registered"
    telegram_id: int
    username: str | None = None
    language_code: str | None = None


class UserActivity(_UserEvent):
    event_type: ClassVar[str] = "user.activity"
    at: AwareDatetime
    kind: str = Field("message", description="What the user did: message, reaction, command, ...")


# --- subscriptions (VIP) -------------------------------------------------------------------------

Plan = Literal["monthly", "yearly", "lifetime", "trial"]


class SubscriptionStarted(_UserEvent):
    event_type: ClassVar[str] = "subscription.started"
    subscription_id: int
    plan: Plan
    start_at: AwareDatetime
    end_at: AwareDatetime | None = Field(None, description="None for lifetime plans.")


class SubscriptionRenewed(_UserEvent):
    event_type: ClassVar[str] = "subscription.renewed"
    subscription_id: int
    plan: Plan
    end_at: AwareDatetime | None


class SubscriptionExpiring(_UserEvent):
    event_type: ClassVar[str] = "subscription.expiring"
    subscription_id: int
    end_at: AwareDatetime
    reminder: str = Field(description="The reminder window, e.g. '7d' or '1d'.")


class SubscriptionExpired(_UserEvent):
    event_type: ClassVar[str] = "subscription.expired"
    subscription_id: int
    end_at: AwareDatetime


class SubscriptionCancelled(_UserEvent):
    event_type: ClassVar[str] = "subscription.cancelled"
    subscription_id: int
    reason: str | None = None


# --- channel membership --------------------------------------------------------------------------


class ChannelJoinRequested(EventPayload):
    """Someone asked to join a channel (Telegram's ``chat_join_request`` update, passed on by the bot)."""

    event_type: ClassVar[str] = "channel.join_requested"
    chat_id: int = Field(description="The channel's Telegram chat id.")
    telegram_user_id: int = Field(description="The requester's Telegram user id (may not be a bot user yet).")
    requested_at: AwareDatetime = Field(description="When Telegram received the request (its ``date``).")

    def aggregate_key(self) -> str:
        return f"chat:{self.chat_id}:user:{self.telegram_user_id}"


# --- channel content -----------------------------------------------------------------------------


class _PostEvent(EventPayload):
    post_id: str = Field(description="The producer's id of the post; stable across updates.")

    def aggregate_key(self) -> str:
        return f"post:{self.post_id}"


class PostScheduled(_PostEvent):
    event_type: ClassVar[str] = "post.scheduled"
    channel_chat_id: int
    post_type: Literal["narrative", "mission", "trivia", "announcement", "event"]
    content: MessageContent
    scheduled_for: AwareDatetime
    recurrence: Literal["daily", "weekly", "monthly"] | None = None
    cancelled: bool = Field(False, description="True cancels a post that is not published yet.")


class PostPublished(_PostEvent):
    event_type: ClassVar[str] = "post.published"
    channel_chat_id: int
    telegram_message_id: int
    published_at: AwareDatetime


class PostFailed(_PostEvent):
    event_type: ClassVar[str] = "post.failed"
    channel_chat_id: int
    reason: str


# --- notifications and broadcasts ----------------------------------------------------------------


class NotificationRequested(_UserEvent):
    event_type: ClassVar[str] = "notification.requested"
    template: str | None = Field(None, description="A template key; rendered in the user's language.")
    params: dict[str, str] = Field(default_factory=dict)
    content: MessageContent | None = Field(None, description="Literal content when no template is used.")
    priority: Priority = Priority.BULK
    resend_if_unknown: bool = Field(
        False, description="Resend when an earlier attempt's outcome is unknown (may duplicate)."
    )

    @model_validator(mode="after")
    def _template_or_content(self) -> NotificationRequested:
        if (self.template is None) == (self.content is None):
            raise ValueError("a notification needs exactly one of template or content")
        return self


# Up to about 200 KB of ids: a record stays far below Kafka's 1 MB whatever the ids and content.
# A longer list is stored in broadcast_audience with the request (recipients_stored);
# dianabot_core.telegram.broadcasts.add_broadcast_to_outbox does both in the caller's transaction.
MAX_INLINE_RECIPIENTS = 10_000


class BroadcastRequested(EventPayload):
    """A message to an audience (all, VIP, free, or listed users), fanned out a page at a time."""

    event_type: ClassVar[str] = "broadcast.requested"
    broadcast_id: str
    audience: Literal["all", "vip", "free", "list"]
    user_ids: tuple[int, ...] = Field(
        (),
        max_length=MAX_INLINE_RECIPIENTS,
        description="The recipients when audience is 'list' (longer lists: recipients_stored).",
    )
    recipients_stored: bool = Field(
        False,
        description="Audience 'list' only: the recipients are the broadcast's rows in broadcast_audience "
        "(written with this event), not user_ids.",
    )
    content: MessageContent
    priority: Priority = Priority.BULK

    def aggregate_key(self) -> str:
        return f"broadcast:{self.broadcast_id}"

    @model_validator(mode="after")
    def _list_has_users(self) -> BroadcastRequested:
        if self.audience == "list" and not (self.user_ids or self.recipients_stored):
            raise ValueError("audience 'list' needs user_ids or recipients_stored")
        if self.recipients_stored and (self.audience != "list" or self.user_ids):
            raise ValueError("recipients_stored is for audience 'list' without user_ids")
        return self


# --- gamification and economy --------------------------------------------------------------------


class MissionAssigned(_UserEvent):
    event_type: ClassVar[str] = "gamification.mission_assigned"
    mission_key: str
    period_start: date


class MissionCompleted(_UserEvent):
    event_type: ClassVar[str] = "gamification.mission_completed"
    mission_key: str
    period_start: date


class DailyGiftClaimed(_UserEvent):
    """The user pressed "claim" on the daily gift; the handler decides whether (and what) it pays."""

    event_type: ClassVar[str] = "gamification.daily_gift_claimed"
    claimed_at: AwareDatetime


class BesitosEarned(_UserEvent):
    event_type: ClassVar[str] = "gamification.besitos_earned"
    amount: int = Field(gt=0)
    source: str
    balance_after: int
    idempotency_key: str


class BesitosSpent(_UserEvent):
    event_type: ClassVar[str] = "gamification.besitos_spent"
    amount: int = Field(gt=0)
    reason: str
    balance_after: int
    idempotency_key: str


class EconomyDriftDetected(EventPayload):
    event_type: ClassVar[str] = "economy.drift_detected"
    checked_at: AwareDatetime
    # user id -> {"balance": ..., "transactions_sum": ...}
    drifts: dict[int, dict[str, int]]

    def aggregate_key(self) -> str:
        return "economy"


# --- scheduler and job runs ----------------------------------------------------------------------


class SchedulerTick(EventPayload):
    event_type: ClassVar[str] = "scheduler.tick"
    job: str = Field(description="scheduled_{frequency}_{purpose}")
    slot: AwareDatetime = Field(description="The scheduled time this tick stands for (UTC).")
    kind: Literal["on_time", "catch_up", "manual"] = "on_time"

    def aggregate_key(self) -> str:
        return f"job:{self.job}"


class JobCompleted(EventPayload):
    event_type: ClassVar[str] = "job.completed"
    job: str
    slot: AwareDatetime
    duration_s: float
    counts: dict[str, int] = Field(default_factory=dict)

    def aggregate_key(self) -> str:
        return f"job:{self.job}"


class JobFailed(EventPayload):
    event_type: ClassVar[str] = "job.failed"
    job: str
    slot: AwareDatetime
    error_type: str
    error_message: str

    def aggregate_key(self) -> str:
        return f"job:{self.job}"


# --- alerts --------------------------------------------------------------------------------------


class AlertRaised(EventPayload):
    event_type: ClassVar[str] = "alert.raised"
    alert_key: str = Field(description="Identifies the incident; repeats of the same key are one incident.")
    severity: Literal["warning", "critical"]
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)

    def aggregate_key(self) -> str:
        return f"alert:{self.alert_key}"


class AlertResolved(EventPayload):
    event_type: ClassVar[str] = "alert.resolved"
    alert_key: str
    summary: str

    def aggregate_key(self) -> str:
        return f"alert:{self.alert_key}"


ALL_EVENTS: tuple[type[EventPayload], ...] = (
    UserRegistered,
    UserActivity,
    SubscriptionStarted,
    SubscriptionRenewed,
    SubscriptionExpiring,
    SubscriptionExpired,
    SubscriptionCancelled,
    ChannelJoinRequested,
    PostScheduled,
    PostPublished,
    PostFailed,
    NotificationRequested,
    BroadcastRequested,
    MissionAssigned,
    MissionCompleted,
    DailyGiftClaimed,
    BesitosEarned,
    BesitosSpent,
    EconomyDriftDetected,
    SchedulerTick,
    JobCompleted,
    JobFailed,
    AlertRaised,
    AlertResolved,
)

EVENT_TYPES: dict[str, type[EventPayload]] = {cls.event_type: cls for cls in ALL_EVENTS}

__all__ = ["ALL_EVENTS", "EVENT_TYPES", "Priority"] + [cls.__name__ for cls in ALL_EVENTS]
