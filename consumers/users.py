"""User bookkeeping: registrations and activity reported by the bot."""

from __future__ import annotations

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert

from contracts.events import UserActivity, UserRegistered
from core.models import Balance, User
from core.pipeline.handlers import HandlerContext, HandlerGroup

handlers = HandlerGroup("users")


@handlers.handler(UserRegistered, action="register", timeout_s=10)
async def users_register_task(event: UserRegistered, ctx: HandlerContext) -> None:
    """Create the user (and an empty balance) unless the bot registered it already."""
    await ctx.session.execute(
        insert(User)
        .values(
            id=event.user_id,
            telegram_id=event.telegram_id,
            username=event.username,
            language_code=event.language_code,
        )
        .on_conflict_do_nothing()
    )
    await ctx.session.execute(insert(Balance).values(user_id=event.user_id).on_conflict_do_nothing())


@handlers.handler(UserActivity, action="record_activity", timeout_s=10)
async def users_record_activity_task(event: UserActivity, ctx: HandlerContext) -> None:
    """Move last_active_at forward (never back: activity events may arrive out of order)."""
    await ctx.session.execute(
        update(User)
        .where(User.id == event.user_id)
        .values(last_active_at=func.greatest(func.coalesce(User.last_active_at, event.at), event.at))
    )
