"""Tables of Telegram delivery: the send ledger, the shared rate limits, chat migrations, broadcasts.

All live on ``dianabot_core.models.Base`` so Alembic sees them (``dianabot_core/models.py`` imports
this module).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from dianabot_core.model_base import Base, string_enum


class SendStatus(enum.StrEnum):
    """Where one send stands in the ledger."""

    NEW = "new"  # known, never attempted
    PENDING = "pending"  # intent recorded, the call is under way (or the process died in it)
    RETRY = "retry"  # an attempt failed without delivering (429, 5xx, refused connection)
    SENT = "sent"  # Telegram answered with the message id
    UNKNOWN = "unknown"  # an attempt was cut off mid-call: it may or may not have been delivered
    BLOCKED = "blocked"  # 403: the user blocked the bot; final
    FAILED = "failed"  # 400 and other permanent errors; final unless the event is replayed


class RecipientStatus(enum.StrEnum):
    QUEUED = "queued"  # a notification was emitted; its outcome is in the send ledger
    SKIPPED_BLOCKED = "skipped_blocked"  # the user had blocked the bot already


class TelegramSend(Base):
    """The send ledger: one row per message the service means to send, keyed by a business key.

    The intent (``pending``) is committed before the Bot API call and the outcome after it, each in
    its own transaction, so a redelivered event never sends again what is recorded as ``sent``.
    """

    __tablename__ = "telegram_sends"
    __table_args__ = (
        Index("ix_telegram_sends_status_attempted_at", "status", "attempted_at"),
        Index("ix_telegram_sends_chat_id", "chat_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # e.g. "notification:<event_id>", "notification:<event_id>#1" for a second part of one message.
    send_key: Mapped[str] = mapped_column(String(200), unique=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    priority: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(32))
    status: Mapped[SendStatus] = mapped_column(string_enum(SendStatus, "telegram_send_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TelegramRateLimit(Base):
    """Shared limiter state: the next free send time and any 429 pause, per scope.

    Scopes are ``{bot_id}:global`` (every message), ``{bot_id}:admin`` (member calls) and
    ``{bot_id}:chat:{chat_id}``. Every process reserves slots here, so the limits hold cluster-wide.
    """

    __tablename__ = "telegram_rate_limits"
    # No index besides the key: the bot's row is updated at the full send rate, and an index on
    # next_at would rule out HOT updates (a new index entry per send). The idle-row sweep scans.

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[datetime | None]
    paused_until: Mapped[datetime | None]


class TelegramChatMigration(Base):
    """A group that became a supergroup: sends to the old id go to the new one."""

    __tablename__ = "telegram_chat_migrations"

    old_chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    new_chat_id: Mapped[int] = mapped_column(BigInteger)
    migrated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Broadcast(Base):
    """A broadcast being fanned out: its request and the keyset cursor over the audience."""

    __tablename__ = "broadcasts"

    broadcast_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    audience: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    # The BroadcastRequested payload as received (content, user_ids for 'list').
    request: Mapped[dict[str, Any]]
    # users.id of the last recipient fanned out; the next step starts after it.
    cursor_user_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    queued: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    skipped_blocked: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    fanned_out_at: Mapped[datetime | None]


class BroadcastAudience(Base):
    """A listed broadcast's recipients, for lists too long to travel in the request's record.

    Written by the requester in the transaction that adds the request to the outbox (or copied from
    an inline list by the first fan-out step); each step reads its page from here and deletes the
    rows it went past. No foreign key: the rows exist before the broadcast's own row does.
    """

    __tablename__ = "broadcast_audience"

    broadcast_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class BroadcastRecipient(Base):
    """One recipient of a broadcast and the notification event that carries its message."""

    __tablename__ = "broadcast_recipients"
    __table_args__ = (Index("ix_broadcast_recipients_send_key", "send_key"),)

    broadcast_id: Mapped[str] = mapped_column(
        ForeignKey("broadcasts.broadcast_id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[RecipientStatus] = mapped_column(
        string_enum(RecipientStatus, "broadcast_recipient_status")
    )
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The send ledger key of the recipient's message (its first part); progress joins on it.
    send_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
