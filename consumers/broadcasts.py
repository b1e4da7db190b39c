"""Broadcasts: ``broadcast.requested`` fanned out into one notification per recipient, a page at a time.

Each step queues up to ``DIANABOT_SENDER__BROADCAST_CHUNK_SIZE`` recipients (keyset over users.id,
users who blocked the bot are recorded and skipped), emits their ``NotificationRequested`` events
on the broadcast's priority lane, and, while users remain, emits the ``BroadcastRequested`` again
(without any listed ids: those are in ``broadcast_audience``) to take the next page. Everything a
step does commits with its ledger row, so a crash repeats at most one page, and no recipient is
queued twice; no record carries more than one page.
"""

from __future__ import annotations

import asyncio
import logging

from consumers.services import Services
from dianabot_contracts.events import BroadcastRequested, NotificationRequested, Priority
from dianabot_contracts.topics import BROADCASTS, NOTIFICATIONS_BULK, NOTIFICATIONS_CRITICAL, TopicSpec
from dianabot_core.pipeline.handlers import HandlerContext, HandlerGroup
from dianabot_core.telegram.broadcasts import (
    FanOutStep,
    ProgressReporter,
    continuation_event_id,
    continuation_of,
    fan_out_step,
)

logger = logging.getLogger("dianabot.broadcasts")


async def emit_notifications(
    ctx: HandlerContext[Services],
    event: BroadcastRequested,
    step: FanOutStep,
    lane: TopicSpec,
    *,
    resend_if_unknown: bool,
) -> None:
    """One ``notification.requested`` per queued recipient, on the broadcast's lane, through the outbox."""
    for index, recipient in enumerate(step.queued):
        if index % 50 == 49:
            await asyncio.sleep(0)  # building envelopes is CPU work: let the critical lane run meanwhile
        message = NotificationRequested(
            user_id=recipient.user_id,
            content=event.content,
            priority=event.priority,
            resend_if_unknown=resend_if_unknown,
        )
        await ctx.emit(message, event_id=recipient.event_id, topic=lane)


def build_handlers(
    *,
    broadcasts: TopicSpec = BROADCASTS,
    critical: TopicSpec = NOTIFICATIONS_CRITICAL,
    bulk: TopicSpec = NOTIFICATIONS_BULK,
    module: str = "broadcasts",
) -> HandlerGroup:
    """The broadcast handlers; tests pass their own topics (and module, hence groups)."""
    handlers = HandlerGroup(module)
    progress = ProgressReporter()

    @handlers.handler(BroadcastRequested, action="fan_out", topics=(broadcasts,), timeout_s=120)
    async def broadcasts_fan_out_task(event: BroadcastRequested, ctx: HandlerContext[Services]) -> None:
        """Queue the next page of recipients; emit their notifications and, if needed, the next step."""
        settings = ctx.services.sender.settings
        step = await fan_out_step(ctx.session, event, chunk_size=settings.broadcast_chunk_size)
        lane = critical if event.priority is Priority.CRITICAL else bulk
        await emit_notifications(
            ctx, event, step, lane, resend_if_unknown=settings.broadcast_resend_if_unknown
        )
        if not step.done:
            next_step = continuation_event_id(event.broadcast_id, step.cursor)
            await ctx.emit(continuation_of(event), event_id=next_step, topic=broadcasts)
        logger.info(
            "broadcast %s: queued %d, skipped %d blocked, %s",
            event.broadcast_id,
            len(step.queued),
            step.skipped_blocked,
            "fan-out complete" if step.done else f"continuing after user {step.cursor}",
        )
        await progress.report(ctx.session, event.broadcast_id, force=step.done)

    return handlers


handlers = build_handlers()
