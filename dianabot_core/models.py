"""SQLAlchemy models of the bot's data that the jobs read and change.

Constraints live in the database, not only in code: a unique Telegram id, one active
subscription per user, balances that never go negative, and transaction idempotency keys.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from dianabot_core.model_base import Base as Base  # re-exported: importing it from here registers every table
from dianabot_core.model_base import string_enum


class UserState(enum.StrEnum):
    FREE = "free"
    VIP = "vip"
    BANNED = "banned"


class TransactionType(enum.StrEnum):
    EARN = "earn"
    SPEND = "spend"
    GIFT = "gift"
    ADMIN = "admin"


class SubscriptionPlan(enum.StrEnum):
    MONTHLY = "monthly"
    YEARLY = "yearly"
    LIFETIME = "lifetime"
    TRIAL = "trial"


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ChannelKind(enum.StrEnum):
    FREE = "free"
    VIP = "vip"


class PostType(enum.StrEnum):
    NARRATIVE = "narrative"
    MISSION = "mission"
    TRIVIA = "trivia"
    ANNOUNCEMENT = "announcement"
    EVENT = "event"


class PostStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    PUBLISHED = "published"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Recurrence(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class MissionType(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    SPECIAL = "special"


class UserMissionStatus(enum.StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CLAIMED = "claimed"


class JoinRequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"  # Telegram no longer had the request (expired, withdrawn, already a member)
    FAILED = "failed"  # Telegram refused the approval for good (e.g. the bot lost its admin rights)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    username: Mapped[str | None] = mapped_column(String(64))
    language_code: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[UserState] = mapped_column(string_enum(UserState, "user_state"), default=UserState.FREE)
    last_active_at: Mapped[datetime | None]
    # Set when Telegram answers 403: the user blocked the bot; nothing is sent to them after.
    bot_blocked_at: Mapped[datetime | None]


class Balance(Base):
    """The besitos balance of one user; changed only with the row locked, alongside a Transaction."""

    __tablename__ = "balances"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("total_earned >= 0", name="total_earned_non_negative"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    total_earned: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Transaction(Base):
    """One signed change of a balance; the idempotency key makes an award happen at most once."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index("ix_transactions_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    amount: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[TransactionType] = mapped_column(string_enum(TransactionType, "transaction_type"))
    source: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Subscription(TimestampMixin, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        # At most one active subscription per user, enforced by the database.
        Index(
            "uq_subscriptions_one_active_per_user",
            "user_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        Index("ix_subscriptions_status_end_at", "status", "end_at"),
        CheckConstraint("(plan = 'lifetime') = (end_at IS NULL)", name="end_at_unless_lifetime"),
        CheckConstraint("end_at IS NULL OR end_at > start_at", name="ends_after_start"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    plan: Mapped[SubscriptionPlan] = mapped_column(string_enum(SubscriptionPlan, "subscription_plan"))
    status: Mapped[SubscriptionStatus] = mapped_column(
        string_enum(SubscriptionStatus, "subscription_status"), default=SubscriptionStatus.ACTIVE
    )
    start_at: Mapped[datetime]
    end_at: Mapped[datetime | None]
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    payment_reference: Mapped[str | None] = mapped_column(String(128))
    kicked_from_channel_at: Mapped[datetime | None]
    # Reminder kind (e.g. "7d", "1d") -> when it was sent for the current end_at.
    reminders_sent: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    archived_at: Mapped[datetime | None]


class VipInviteLink(Base):
    """A single-use VIP invite link, recorded in the transaction of the grant that created it."""

    __tablename__ = "vip_invite_links"
    __table_args__ = (
        Index("ix_vip_invite_links_user_id", "user_id"),
        Index("ix_vip_invite_links_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    invite_link: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str | None] = mapped_column(String(32))  # Telegram allows 32 characters
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]


class Channel(Base):
    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    telegram_chat_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    kind: Mapped[ChannelKind] = mapped_column(string_enum(ChannelKind, "channel_kind"))
    title: Mapped[str | None] = mapped_column(String(255))


class ChannelPost(TimestampMixin, Base):
    __tablename__ = "channel_posts"
    __table_args__ = (Index("ix_channel_posts_status_scheduled_for", "status", "scheduled_for"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The producer's id of the post (post.scheduled's post_id): updates find the row by it.
    external_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    post_type: Mapped[PostType] = mapped_column(string_enum(PostType, "post_type"))
    # {"text": ..., "media": [...], "buttons": [[{"text": ..., "url": ...}]]}
    content: Mapped[dict[str, Any]]
    scheduled_for: Mapped[datetime]
    status: Mapped[PostStatus] = mapped_column(
        string_enum(PostStatus, "post_status"), default=PostStatus.SCHEDULED
    )
    published_at: Mapped[datetime | None]
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    is_protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    recurrence: Mapped[Recurrence | None] = mapped_column(string_enum(Recurrence, "recurrence"))


class ChannelJoinRequest(Base):
    """A request to join a channel (free channels approve them after a waiting time).

    Keyed by chat and Telegram user: the requester need not be a user of the bot yet, and Telegram
    keeps at most one pending request per user and chat.
    """

    __tablename__ = "channel_join_requests"
    __table_args__ = (
        Index(
            "ix_channel_join_requests_pending", "requested_at", postgresql_where=text("status = 'pending'")
        ),
        Index("ix_channel_join_requests_decided_at", "decided_at"),
    )

    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    telegram_user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    requested_at: Mapped[datetime]
    status: Mapped[JoinRequestStatus] = mapped_column(
        string_enum(JoinRequestStatus, "join_request_status"), default=JoinRequestStatus.PENDING
    )
    decided_at: Mapped[datetime | None]


class Mission(Base):
    __tablename__ = "missions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(255))
    mission_type: Mapped[MissionType] = mapped_column(string_enum(MissionType, "mission_type"))
    requirements: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    # {"besitos": 10, "items": [...]}
    rewards: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))


class UserMission(Base):
    __tablename__ = "user_missions"
    __table_args__ = (
        # One assignment of a mission per user per period (day or week): reassigning is a no-op.
        UniqueConstraint(
            "user_id", "mission_id", "period_start", name="uq_user_missions_user_mission_period"
        ),
        Index("ix_user_missions_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    mission_id: Mapped[int] = mapped_column(ForeignKey("missions.id", ondelete="CASCADE"))
    status: Mapped[UserMissionStatus] = mapped_column(
        string_enum(UserMissionStatus, "user_mission_status"), default=UserMissionStatus.ACTIVE
    )
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    period_start: Mapped[date] = mapped_column(Date)
    assigned_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class DailyGiftStreak(Base):
    """A user's daily-gift streak: consecutive claims, each within 48 h of the one before."""

    __tablename__ = "daily_gift_streaks"
    __table_args__ = (
        CheckConstraint("streak_days >= 0", name="streak_days_non_negative"),
        Index("ix_daily_gift_streaks_running", "last_claimed_at", postgresql_where=text("streak_days > 0")),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    streak_days: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_claimed_at: Mapped[datetime]


# --- reliability machinery -----------------------------------------------------------------------


class ProcessedEvent(Base):
    """The idempotency ledger: a row per (consumer, event) handled, committed with its effects."""

    __tablename__ = "processed_events"
    __table_args__ = (Index("ix_processed_events_processed_at", "processed_at"),)

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[datetime] = mapped_column(server_default=func.now())


class OutboxEvent(Base):
    """An event written in the same transaction as the change that caused it; the relay publishes it.

    Rows are published in id order and marked; a crash after publishing and before marking only
    re-publishes the same event_id, which consumers drop as a duplicate.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
        Index("ix_outbox_published_at", "published_at"),
        # The heartbeat looks for parked rows every minute; they are few, the table is not.
        Index("ix_outbox_parked", "parked_at", postgresql_where=text("parked_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    body: Mapped[dict[str, Any]]
    # Trace context (traceparent) of the transaction that wrote the row, so the trace continues.
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[datetime | None]
    # A row Kafka can never take (e.g. larger than the broker's limit) is parked with the reason
    # instead of blocking every row behind it; `dianabot outbox` tooling and alerts read these.
    parked_at: Mapped[datetime | None]
    parked_reason: Mapped[str | None] = mapped_column(Text)


class DeadLetterRecord(Base):
    """One dead letter per (handler, source record): a rewound batch never dead-letters a record twice.

    The row is claimed before the record is published to the dead-letter topic and marked
    `published_at` once Kafka acknowledged it. A dead letter Kafka cannot take (too large, topic
    problem) keeps its bytes here instead (`key`, `value`, `headers`, `publish_error`), so the lane
    moves on and nothing is lost; monitoring alerts on such rows.
    """

    __tablename__ = "dead_letter_records"
    __table_args__ = (
        Index(
            "ix_dead_letter_records_stored", "failed_at", postgresql_where=text("publish_error IS NOT NULL")
        ),
        Index("ix_dead_letter_records_failed_at", "failed_at"),
    )

    handler: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[datetime]
    published_at: Mapped[datetime | None]
    publish_error: Mapped[str | None] = mapped_column(Text)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))


# Every table in one metadata for Alembic; those modules import Base from dianabot_core.model_base, not
# from here, so this is not a cycle.
import dianabot_core.incidents  # noqa: E402
import dianabot_core.jobs  # noqa: E402
import dianabot_core.telegram.models  # noqa: E402,F401
