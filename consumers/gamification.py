"""Missions and besitos: assignment and expiry jobs, the exactly-once award, the weekly leaderboard.

Jobs (scheduler ticks; ``consumers/jobs.py`` records their runs):

* ``scheduled_daily_mission_assignment`` — expires unfinished daily missions, then assigns the active
  daily missions to active users for the slot's local day, page by page; one
  ``gamification.mission_assigned`` and one bulk prompt (``notification.requested``) per new assignment;
* ``scheduled_weekly_mission_reset`` — the same for weekly missions and the slot's local ISO week;
* ``scheduled_weekly_leaderboard`` — the week's top earners as a ``post.scheduled`` for the free channel;
* ``scheduled_daily_streak_reset`` — daily-gift streaks whose last claim is over 48 h before the
  slot are set to 0, in bounded batches.

Handlers (consumer groups ``dianabot.gamification.{action}``):

* ``award_mission`` — ``gamification.mission_completed`` pays the mission's besitos once
  (``dianabot_core/domain/gamification.py``), then emits ``gamification.besitos_earned`` and a notification;
* ``claim_daily_gift`` — ``gamification.daily_gift_claimed`` pays the base reward (and the bonus of a
  streak milestone) once per 24 h, extending the streak or starting it again after 48 h, then emits
  one ``gamification.besitos_earned`` per payment and a notification.

Users are only ever told through ``notification.requested``; the notifications module sends it.

Periods are local to the bot's timezone (``ctx.services.timezone``) and taken from
the tick's slot, not the wall clock, so a late or caught-up tick still assigns for its own day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Services
from dianabot_contracts.events import (
    BesitosEarned,
    DailyGiftClaimed,
    MessageContent,
    MissionAssigned,
    MissionCompleted,
    NotificationRequested,
    PostScheduled,
    Priority,
    SchedulerTick,
)
from dianabot_contracts.ids import derived_event_id
from dianabot_contracts.topics import GAMIFICATION, TopicSpec
from dianabot_core.domain.gamification import (
    Assignment,
    Award,
    DailyGift,
    Period,
    active_missions,
    active_user_ids,
    assign_missions,
    award_mission,
    claim_daily_gift,
    expire_unfinished,
    leaderboard_text,
    local_day,
    local_week,
    reset_broken_streaks,
    top_earners,
    week_label,
)
from dianabot_core.models import Channel, ChannelKind, MissionType, User
from dianabot_core.outbox import add_to_outbox
from dianabot_core.pipeline.errors import PermanentError
from dianabot_core.pipeline.handlers import DEFAULT_RETRY_DELAYS_S, PRODUCER, HandlerContext, HandlerGroup

logger = logging.getLogger("dianabot.gamification")


# --- texts (literal content, Spanish unless the user's language is English) ----------------------


def _is_english(language_code: str | None) -> bool:
    return (language_code or "").lower().startswith("en")


def assignment_text(assignment: Assignment, language_code: str | None) -> str:
    mission = assignment.mission
    if _is_english(language_code):
        return f"🎯 New mission: {mission.title}. Reward: {mission.besitos} besitos."
    return f"🎯 Nueva misión: {mission.title}. Recompensa: {mission.besitos} besitos."


def award_text(award: Award, language_code: str | None) -> str:
    if _is_english(language_code):
        return (
            f"✨ Mission complete: {award.mission_title}! You earned {award.amount} besitos. "
            f"Balance: {award.balance_after}."
        )
    return (
        f"✨ ¡Misión cumplida: {award.mission_title}! Has ganado {award.amount} besitos. "
        f"Saldo: {award.balance_after}."
    )


def daily_gift_text(gift: DailyGift, language_code: str | None) -> str:
    balance = gift.payments[-1].balance_after
    if _is_english(language_code):
        return f"🎁 Daily gift: +{gift.amount} besitos. Streak: {gift.streak_days} days. Balance: {balance}."
    return f"🎁 Regalo diario: +{gift.amount} besitos. Racha: {gift.streak_days} días. Saldo: {balance}."


# --- jobs ----------------------------------------------------------------------------------------


async def scheduled_daily_mission_assignment(
    tick: SchedulerTick, ctx: HandlerContext[Services]
) -> dict[str, int]:
    """Expire yesterday's unfinished daily missions and assign today's (local day of the slot)."""
    period = local_day(tick.slot, ctx.services.timezone)
    return await _reset_and_assign(tick, ctx, MissionType.DAILY, period)


async def scheduled_weekly_mission_reset(
    tick: SchedulerTick, ctx: HandlerContext[Services]
) -> dict[str, int]:
    """Expire last week's unfinished weekly missions and assign this week's (local ISO week)."""
    period = local_week(tick.slot, ctx.services.timezone)
    return await _reset_and_assign(tick, ctx, MissionType.WEEKLY, period)


async def _reset_and_assign(
    tick: SchedulerTick, ctx: HandlerContext[Services], mission_type: MissionType, period: Period
) -> dict[str, int]:
    """Each page commits on its own with its events (as the cleanup job's batches): a run over many
    users holds no long transaction, and a rerun after a crash inserts (and announces) only what
    is missing, since reassigning is a no-op."""
    settings = ctx.services.gamification
    sessions = ctx.transactions()
    expired = await ctx.in_batches(
        lambda session, limit: expire_unfinished(session, mission_type, tick.slot, limit),
        batch_size=settings.batch_size,
        max_batches=settings.max_batches,
    )
    missions = await active_missions(ctx.session, mission_type)
    assigned, users, after_id = 0, 0, 0
    for _ in range(settings.max_batches if missions else 0):
        async with sessions() as session, session.begin():
            page = await active_user_ids(
                session,
                active_since=tick.slot - settings.active_within,
                after_id=after_id,
                limit=settings.batch_size,
            )
            new = await assign_missions(session, page, missions, period, ctx.clock.now())
            await _announce(session, ctx, new)
        users += len(page)
        assigned += len(new)
        if len(page) < settings.batch_size:
            break
        after_id = page[-1]
    if assigned or expired:
        logger.info(
            "%s missions: %d expired, %d assigned for %s", mission_type, expired, assigned, period.start
        )
    return {"missions_expired": expired, "users_seen": users, "missions_assigned": assigned}


async def _announce(session: AsyncSession, ctx: HandlerContext[Services], new: Sequence[Assignment]) -> None:
    """Per new assignment: one mission_assigned and one bulk prompt, ids from (user, mission, period)."""
    languages = await _languages(session, {a.user_id for a in new})
    for assignment in new:
        key = (assignment.user_id, assignment.mission.key, assignment.period_start.isoformat())
        assigned = MissionAssigned(
            user_id=assignment.user_id,
            mission_key=assignment.mission.key,
            period_start=assignment.period_start,
        )
        prompt = NotificationRequested(
            user_id=assignment.user_id,
            content=MessageContent(text=assignment_text(assignment, languages.get(assignment.user_id))),
            priority=Priority.BULK,
        )
        for payload, event_id in (
            (assigned, derived_event_id(MissionAssigned.event_type, *key)),
            (prompt, derived_event_id("notification.mission_prompt", *key)),
        ):
            await add_to_outbox(
                session, payload, producer=PRODUCER, caused_by=ctx.envelope, event_id=event_id
            )


async def _languages(session: AsyncSession, user_ids: set[int]) -> dict[int, str | None]:
    if not user_ids:
        return {}
    rows = await session.execute(select(User.id, User.language_code).where(User.id.in_(user_ids)))
    return {user_id: language for user_id, language in rows}


async def scheduled_weekly_leaderboard(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
    """Post the top earners of the 7 days before the slot to the free channel (one post per week)."""
    settings = ctx.services.gamification
    leaders = await top_earners(
        ctx.session, since=tick.slot - timedelta(days=7), until=tick.slot, limit=settings.leaderboard_size
    )
    if not leaders:
        logger.info("no besitos earned this week: no leaderboard posted")
        return {"leaders": 0, "posts": 0}
    week = local_week(tick.slot - timedelta(days=7), ctx.services.timezone).start
    post_id = f"leaderboard:{week_label(week)}"
    post = PostScheduled(
        post_id=post_id,
        channel_chat_id=await free_channel(ctx.session),
        post_type="announcement",
        content=MessageContent(text=leaderboard_text(leaders, week)),
        scheduled_for=ctx.clock.now(),
    )
    # One post per week (post_id); a manual re-run re-announces the same post_id, which updates it.
    await ctx.emit(post, event_id=derived_event_id(PostScheduled.event_type, post_id, ctx.envelope.event_id))
    return {"leaders": len(leaders), "posts": 1}


async def free_channel(session: AsyncSession) -> int:
    """The Telegram chat id of the free channel (the first ``channels`` row of kind ``free``)."""
    chat_id = await session.scalar(
        select(Channel.telegram_chat_id).where(Channel.kind == ChannelKind.FREE).order_by(Channel.id).limit(1)
    )
    if chat_id is None:
        raise PermanentError("no free channel configured: add a row to channels with kind 'free'")
    return chat_id


async def scheduled_daily_streak_reset(tick: SchedulerTick, ctx: HandlerContext[Services]) -> dict[str, int]:
    """Break the streaks whose last claim is more than the streak window before the slot, one short
    transaction per batch (as the cleanup job), so a large backlog holds no long locks."""
    settings = ctx.services.gamification
    window = settings.streak_broken_after
    reset = await ctx.in_batches(
        lambda session, limit: reset_broken_streaks(session, tick.slot, window=window, limit=limit),
        batch_size=settings.batch_size,
        max_batches=settings.max_batches,
    )
    if reset:
        logger.info("%d daily-gift streaks broken", reset)
    return {"streaks_reset": reset}


def register_jobs(registry: ScheduledJobs, *, ticks: tuple[TopicSpec, ...] = ()) -> None:
    """Register the module's jobs; tests pass their own registry and tick topic."""
    registry.scheduled("scheduled_daily_mission_assignment", timeout_s=900, topics=ticks)(
        scheduled_daily_mission_assignment
    )
    registry.scheduled("scheduled_weekly_mission_reset", timeout_s=900, topics=ticks)(
        scheduled_weekly_mission_reset
    )
    registry.scheduled("scheduled_weekly_leaderboard", topics=ticks)(scheduled_weekly_leaderboard)
    registry.scheduled("scheduled_daily_streak_reset", timeout_s=900, topics=ticks)(
        scheduled_daily_streak_reset
    )


# --- handlers ------------------------------------------------------------------------------------


async def gamification_award_mission_task(event: MissionCompleted, ctx: HandlerContext[Services]) -> None:
    """Pay the completed mission's besitos once, then announce the earning and tell the user."""
    award = await award_mission(
        ctx.session,
        user_id=event.user_id,
        mission_key=event.mission_key,
        period_start=event.period_start,
        now=ctx.clock.now(),
    )
    if award is None:
        logger.info("mission %s: nothing to pay (already paid, expired or no besitos)", event.mission_key)
        return
    earned = BesitosEarned(
        user_id=award.user_id,
        amount=award.amount,
        source="mission",
        balance_after=award.balance_after,
        idempotency_key=award.idempotency_key,
    )
    await ctx.emit(earned, event_id=derived_event_id(BesitosEarned.event_type, award.idempotency_key))
    user = await ctx.session.get(User, award.user_id)
    if user is None or user.bot_blocked_at is not None:
        return
    notice = NotificationRequested(
        user_id=award.user_id, content=MessageContent(text=award_text(award, user.language_code))
    )
    await ctx.emit(notice, event_id=derived_event_id("notification.mission_award", award.idempotency_key))


async def gamification_claim_daily_gift_task(event: DailyGiftClaimed, ctx: HandlerContext[Services]) -> None:
    """Pay the daily gift (and a streak milestone's bonus) once, then announce it and tell the user."""
    rules = ctx.services.gamification.daily_gift_rules()
    gift = await claim_daily_gift(
        ctx.session, user_id=event.user_id, claimed_at=event.claimed_at, rules=rules
    )
    if gift is None:
        logger.info("daily gift: nothing to pay (claimed within the cooldown, or a repeat)")
        return
    for payment in gift.payments:
        earned = BesitosEarned(
            user_id=gift.user_id,
            amount=payment.amount,
            source=payment.source,
            balance_after=payment.balance_after,
            idempotency_key=payment.idempotency_key,
        )
        await ctx.emit(earned, event_id=derived_event_id(BesitosEarned.event_type, payment.idempotency_key))
    user = await ctx.session.get(User, gift.user_id)
    if user is None or user.bot_blocked_at is not None or not gift.payments:
        return
    notice = NotificationRequested(
        user_id=gift.user_id, content=MessageContent(text=daily_gift_text(gift, user.language_code))
    )
    key = gift.payments[0].idempotency_key
    await ctx.emit(notice, event_id=derived_event_id("notification.daily_gift", key))


def build_handlers(
    *,
    module: str = "gamification",
    topic: TopicSpec = GAMIFICATION,
    retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S,
) -> HandlerGroup:
    """The module's handlers; tests pass their own module (hence consumer groups) and topic."""
    group = HandlerGroup(module)
    group.handler(MissionCompleted, action="award_mission", retry_delays_s=retry_delays_s, topics=(topic,))(
        gamification_award_mission_task
    )
    group.handler(
        DailyGiftClaimed, action="claim_daily_gift", retry_delays_s=retry_delays_s, topics=(topic,)
    )(gamification_claim_daily_gift_task)
    return group


handlers = build_handlers()
register_jobs(jobs)
