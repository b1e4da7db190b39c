"""User bookkeeping: registrations and activity reported by the bot."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text

from consumers.services import Services
from dianabot_contracts.events import UserActivity, UserRegistered
from dianabot_core.pipeline.handlers import BatchContext, Delivery, HandlerContext, HandlerGroup

handlers = HandlerGroup("users")


# Plain SQL: SQLAlchemy compiles a PostgreSQL ``insert(...).on_conflict_do_nothing()`` anew on every
# call (its dialect construct is not cacheable), a sixth of a registration's time; text is cached.
# One statement for the user and its balance: a round trip (a socket write and a wait) is most of a
# per-event handler's time. The balance's foreign key is checked at the statement's end, so it
# sees the user the CTE inserted.
_CREATE_USER_AND_BALANCE = text(
    """
    WITH new_user AS (
        INSERT INTO users (id, telegram_id, username, language_code, state)
        VALUES (:user_id, :telegram_id, :username, :language_code, 'free')
        ON CONFLICT DO NOTHING
    )
    INSERT INTO balances (user_id) VALUES (:user_id) ON CONFLICT DO NOTHING
    """
)


@handlers.handler(UserRegistered, action="register", timeout_s=10)
async def users_register_task(event: UserRegistered, ctx: HandlerContext[Services]) -> None:
    """Create the user (and an empty balance) unless the bot registered it already."""
    await ctx.session.execute(
        _CREATE_USER_AND_BALANCE,
        {
            "user_id": event.user_id,
            "telegram_id": event.telegram_id,
            "username": event.username,
            "language_code": event.language_code,
        },
    )


# Activity is the bot's busiest event and commutative (only each user's latest time matters), so
# a batch is coalesced: one statement for all its users, one round trip per batch.
_MOVE_LAST_ACTIVE_FORWARD = text(
    """
    UPDATE users AS u
    SET last_active_at = GREATEST(COALESCE(u.last_active_at, latest.at), latest.at)
    FROM unnest(CAST(:user_ids AS bigint[]), CAST(:ats AS timestamptz[])) AS latest(user_id, at)
    WHERE u.id = latest.user_id
    """
)


@handlers.batch_handler(UserActivity, action="record_activity", timeout_s=10)
async def users_record_activity_task(
    events: Sequence[Delivery[UserActivity]], ctx: BatchContext[Services]
) -> None:
    """Move each user's last_active_at forward to their latest activity in the batch (never back:
    activity events may arrive out of order)."""
    latest: dict[int, datetime] = {}
    for delivery in events:
        event = delivery.payload
        if event.user_id not in latest or event.at > latest[event.user_id]:
            latest[event.user_id] = event.at
    user_ids = sorted(latest)  # one lock order for every batch: concurrent batches cannot deadlock
    await ctx.session.execute(
        _MOVE_LAST_ACTIVE_FORWARD, {"user_ids": user_ids, "ats": [latest[u] for u in user_ids]}
    )
