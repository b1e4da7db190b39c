"""The VIP subscription lifecycle: expiry reminders, expiry and removal, access, archiving.

Jobs (scheduler ticks; ``consumers/jobs.py`` records their runs):

* ``scheduled_hourly_subscription_expiry_reminders`` — one ``subscription.expiring`` per subscription
  and reminder window, with a deterministic event id, marked sent in the same transaction;
* ``scheduled_hourly_subscription_expiry`` — ended subscriptions marked ``expired``, one
  ``subscription.expired`` each;
* ``scheduled_daily_subscription_archive`` — expired subscriptions archived after 30 days, in batches.

Handlers (consumer groups ``dianabot.subscriptions.{action}``):

* ``send_expiry_reminder`` — the reminder with a renew button (stale ones, after a renewal, are dropped);
* ``remove_expired_member`` — ban from the VIP channel, state back to free, farewell with a renew button;
* ``grant_access`` — state VIP, unban, one single-use invite link sent once (and recorded in
  ``vip_invite_links`` with the grant).

The rules live in ``dianabot_core/domain/subscriptions.py``. Every message has a send-ledger key derived from
its event id, so a redelivered or retried event never sends it twice; member calls are idempotent.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.jobs import ScheduledJobs, jobs
from consumers.services import Services
from dianabot_contracts.envelope import EventPayload
from dianabot_contracts.events import (
    Priority,
    SchedulerTick,
    SubscriptionExpired,
    SubscriptionExpiring,
    SubscriptionRenewed,
    SubscriptionStarted,
)
from dianabot_contracts.topics import SUBSCRIPTIONS, TopicSpec
from dianabot_core.domain.subscriptions import (
    archive_expired,
    expire_ended,
    mark_reminder_sent,
    record_invite_link,
    record_kicked,
    reminders_due,
    set_user_free,
    set_user_vip,
    should_kick,
)
from dianabot_core.models import Channel, ChannelKind, Subscription, SubscriptionStatus, User, UserState
from dianabot_core.pipeline.errors import PermanentError
from dianabot_core.pipeline.handlers import DEFAULT_RETRY_DELAYS_S, HandlerContext, HandlerGroup
from dianabot_core.telegram.sender import SendRequest
from dianabot_core.telegram.templates import TEMPLATES, render

logger = logging.getLogger("dianabot.subscriptions")


# A removal must not be forgotten: retries outlast a long Telegram outage, then the dead letter.
KICK_RETRY_DELAYS_S = (10.0, 60.0, 300.0, 1800.0, 7200.0)
# Per handler: up to four Bot API calls, each of which may wait for rate-limit slots.
HANDLER_TIMEOUT_S = 150.0
_IN_CHANNEL = frozenset({"member", "administrator", "creator"})


# --- jobs ----------------------------------------------------------------------------------------


async def scheduled_hourly_subscription_expiry_reminders(
    tick: SchedulerTick, ctx: HandlerContext[Services], *, topic: TopicSpec = SUBSCRIPTIONS
) -> dict[str, int]:
    """Emit the reminders due at the tick's slot, page by page, each marked sent with its event."""
    settings = ctx.services.subscriptions
    emitted, after_id = 0, 0
    for _ in range(settings.max_batches):
        page = await reminders_due(
            ctx.session, tick.slot, settings.reminder_windows, limit=settings.batch_size, after_id=after_id
        )
        for due in page:
            await _emit(ctx, due.payload(), due.event_id, topic)
            await mark_reminder_sent(ctx.session, due.subscription_id, due.kind, due.end_at)
        emitted += len(page)
        if len(page) < settings.batch_size:
            break
        after_id = page[-1].subscription_id
    if emitted:
        logger.info("%d expiry reminders due at %s", emitted, tick.slot.isoformat())
    return {"reminders_emitted": emitted}


async def scheduled_hourly_subscription_expiry(
    tick: SchedulerTick, ctx: HandlerContext[Services], *, topic: TopicSpec = SUBSCRIPTIONS
) -> dict[str, int]:
    """Mark the subscriptions ended by the tick's slot expired, one ``subscription.expired`` each."""
    settings = ctx.services.subscriptions
    expired = 0
    for _ in range(settings.max_batches):
        ended = await expire_ended(ctx.session, tick.slot, limit=settings.batch_size)
        for subscription in ended:
            await _emit(ctx, subscription.payload(), subscription.event_id, topic)
        expired += len(ended)
        if len(ended) < settings.batch_size:
            break
    if expired:
        logger.info("%d subscriptions expired at %s", expired, tick.slot.isoformat())
    return {"subscriptions_expired": expired}


async def scheduled_daily_subscription_archive(
    tick: SchedulerTick, ctx: HandlerContext[Services]
) -> dict[str, int]:
    """Archive expired subscriptions past the retention, one short transaction per batch, until none.

    Not in the handler's transaction (as the cleanup job): a large backlog would hold its locks for
    the whole run. Each batch is idempotent, so a crash half-way loses nothing.
    """
    settings = ctx.services.subscriptions
    archived = await ctx.in_batches(
        lambda session, limit: archive_expired(
            session, tick.slot, older_than=settings.archive_after, limit=limit
        ),
        batch_size=settings.batch_size,
        max_batches=settings.max_batches,
    )
    if archived:
        logger.info("%d expired subscriptions archived", archived)
    return {"subscriptions_archived": archived}


def register_jobs(
    registry: ScheduledJobs, *, topic: TopicSpec = SUBSCRIPTIONS, ticks: tuple[TopicSpec, ...] = ()
) -> None:
    """Register the lifecycle's jobs; tests pass their own registry, event topic and tick topic."""
    registry.scheduled("scheduled_hourly_subscription_expiry_reminders", topics=ticks)(
        partial(scheduled_hourly_subscription_expiry_reminders, topic=topic)
    )
    registry.scheduled("scheduled_hourly_subscription_expiry", topics=ticks)(
        partial(scheduled_hourly_subscription_expiry, topic=topic)
    )
    registry.scheduled("scheduled_daily_subscription_archive", timeout_s=900, topics=ticks)(
        scheduled_daily_subscription_archive
    )


# --- handlers ------------------------------------------------------------------------------------


async def subscriptions_send_expiry_reminder_task(
    event: SubscriptionExpiring, ctx: HandlerContext[Services]
) -> None:
    """Send the reminder of one window, unless the subscription was renewed or ended since."""
    subscription = await ctx.session.get(Subscription, event.subscription_id)
    if subscription is None or subscription.status != SubscriptionStatus.ACTIVE:
        logger.info("reminder dropped: the subscription is no longer active")
        return
    if subscription.end_at != event.end_at:
        logger.info("reminder dropped: the subscription was renewed since it was due")
        return
    settings = ctx.services.subscriptions
    params = {
        "end_date": event.end_at.astimezone(ctx.services.timezone).date().isoformat(),
        "renew_url": settings.renew_url,
    }
    user = await _user(ctx.session, event.user_id)
    key = f"subscription.reminder:{ctx.envelope.event_id}"
    await _send(ctx, user, key, reminder_template(event.reminder), params)


def reminder_template(kind: str) -> str:
    """The reminder's own text ('7d', '3d', '1d'), or the generic one for other windows."""
    specific = f"subscription.reminder_{kind}"
    return specific if specific in TEMPLATES else "subscription.reminder"


async def subscriptions_remove_expired_member_task(
    event: SubscriptionExpired, ctx: HandlerContext[Services]
) -> None:
    """Ban the user from the VIP channel, set them free and say goodbye, unless they renewed.

    ``should_kick`` locks the subscription and the user until this transaction ends, so a renewal
    committed meanwhile waits, and its unban follows this ban. A failed ban raises (a transient
    error is retried by the pipeline); nothing is recorded until it succeeded.
    """
    if not await should_kick(ctx.session, event.subscription_id):
        logger.info("not removed: renewed, already removed or not expired")
        return
    channel = await vip_channel(ctx.session)
    user = await _user(ctx.session, event.user_id)
    was_there = await ctx.services.sender.ban_chat_member(channel, user.telegram_id)
    await record_kicked(ctx.session, event.subscription_id, ctx.clock.now())
    await set_user_free(ctx.session, event.user_id)
    logger.info(
        "removed from the VIP channel" if was_there else "not in the VIP channel: nothing to remove",
        extra={"user_id": user.id},
    )
    if user.state != UserState.BANNED:
        params = {"renew_url": ctx.services.subscriptions.renew_url}
        key = f"subscription.farewell:{ctx.envelope.event_id}"
        await _send(ctx, user, key, "subscription.expired_farewell", params)


Granting = SubscriptionStarted | SubscriptionRenewed


async def subscriptions_grant_access_task(event: Granting, ctx: HandlerContext[Services]) -> None:
    """Make the user VIP and let them into the VIP channel with one single-use invite link.

    A user already in the channel (a renewal before expiry) needs no link. A redelivered event finds
    its link recorded as sent in the send ledger and creates none.
    """
    subscription = await ctx.session.get(Subscription, event.subscription_id)
    if subscription is None:
        raise PermanentError(f"subscription {event.subscription_id} not found")
    if subscription.status != SubscriptionStatus.ACTIVE:
        logger.info("no access granted: the subscription is %s", subscription.status)
        return
    # Locked until commit: a second delivery of this event waits, then finds the link sent.
    user = await _user(ctx.session, subscription.user_id, lock=True)
    await set_user_vip(ctx.session, user.id)
    await ctx.session.refresh(user)
    if user.state == UserState.BANNED:
        logger.warning("no access granted: the user is banned from the bot", extra={"user_id": user.id})
        return
    key = f"subscription.invite:{ctx.envelope.event_id}"
    if await ctx.services.sender.was_delivered(key):
        return
    channel = await vip_channel(ctx.session)
    sender = ctx.services.sender
    member = await sender.get_chat_member(channel, user.telegram_id)
    if member is not None and member.status in _IN_CHANNEL:
        logger.info("already in the VIP channel: no invite link needed", extra={"user_id": user.id})
        return
    if member is not None and member.status == "kicked":
        await sender.unban_chat_member(channel, user.telegram_id)
    if user.bot_blocked_at is not None:
        logger.info("user blocked the bot: unbanned, no invite link sent", extra={"user_id": user.id})
        return
    ttl = ctx.services.subscriptions.invite_link_ttl
    name = f"subscription {subscription.id}"
    link = await sender.create_invite_link(channel, expires_in=ttl, name=name)
    await record_invite_link(
        ctx.session,
        user_id=user.id,
        subscription_id=subscription.id,
        invite_link=link.url,
        name=name,
        expires_at=link.expires_at,
    )
    params = {"invite_link": link.url, "expires_in": _duration(ttl)}
    await _send(ctx, user, key, "subscription.invite_link", params)


def build_handlers(
    *,
    module: str = "subscriptions",
    topic: TopicSpec = SUBSCRIPTIONS,
    retry_delays_s: tuple[float, ...] | None = None,
) -> HandlerGroup:
    """The lifecycle's handlers; tests pass their own topic, module (hence groups) and retry delays."""
    group = HandlerGroup(module)
    topics = (topic,)
    group.handler(
        SubscriptionExpiring,
        action="send_expiry_reminder",
        timeout_s=HANDLER_TIMEOUT_S,
        retry_delays_s=retry_delays_s or DEFAULT_RETRY_DELAYS_S,
        topics=topics,
    )(subscriptions_send_expiry_reminder_task)
    group.handler(
        SubscriptionExpired,
        action="remove_expired_member",
        timeout_s=HANDLER_TIMEOUT_S,
        retry_delays_s=retry_delays_s or KICK_RETRY_DELAYS_S,
        topics=topics,
    )(subscriptions_remove_expired_member_task)
    granting: tuple[type[Granting], ...] = (SubscriptionStarted, SubscriptionRenewed)
    group.handler(
        *granting,
        action="grant_access",
        timeout_s=HANDLER_TIMEOUT_S,
        retry_delays_s=retry_delays_s or KICK_RETRY_DELAYS_S,
        topics=topics,
    )(subscriptions_grant_access_task)
    return group


# --- helpers -------------------------------------------------------------------------------------


async def vip_channel(session: AsyncSession) -> int:
    """The Telegram chat id of the VIP channel (the first ``channels`` row of kind ``vip``)."""
    chat_id = await session.scalar(
        select(Channel.telegram_chat_id).where(Channel.kind == ChannelKind.VIP).order_by(Channel.id).limit(1)
    )
    if chat_id is None:
        raise PermanentError("no VIP channel configured: add a row to channels with kind 'vip'")
    return chat_id


async def _emit(
    ctx: HandlerContext[Services], payload: EventPayload, event_id: UUID, topic: TopicSpec
) -> None:
    """``ctx.emit`` with a deterministic id, on ``topic`` (the registry's, or a test's own)."""
    await ctx.emit(payload, event_id=event_id, topic=topic)


async def _user(session: AsyncSession, user_id: int, *, lock: bool = False) -> User:
    user = await session.get(User, user_id, with_for_update=lock)
    if user is None:
        raise PermanentError(f"user {user_id} not found")
    return user


async def _send(
    ctx: HandlerContext[Services], user: User, key: str, template: str, params: dict[str, str]
) -> None:
    """One critical message to the user in their language; users who blocked the bot are skipped."""
    if user.bot_blocked_at is not None:
        logger.info("user blocked the bot: %s not sent", template, extra={"user_id": user.id})
        return
    request = SendRequest(
        key=key,
        chat_id=user.telegram_id,
        content=render(template, params, user.language_code),
        priority=Priority.CRITICAL,
        user_id=user.id,
    )
    result = await ctx.services.sender.send(request)
    logger.info("%s: %s", template, result.outcome.value, extra={"user_id": user.id})


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


handlers = build_handlers()
register_jobs(jobs)
