"""Notifications: one message per ``notification.requested``, rendered in the user's language.

Both priority lanes (``dianabot.notifications.critical`` and ``.bulk``) have their own consumer
group, so a bulk backlog never delays the critical lane's consumer; inside the sender, critical
sends also take rate-limit slots ahead of bulk ones. A batch is sent concurrently across users
(one user's messages stay in order); the send ledger makes a redelivered notification a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from consumers.services import Services
from dianabot_contracts.events import MessageContent, NotificationRequested
from dianabot_contracts.topics import NOTIFICATIONS_BULK, NOTIFICATIONS_CRITICAL, TopicSpec
from dianabot_core.models import User
from dianabot_core.pipeline.errors import PermanentError
from dianabot_core.pipeline.handlers import BatchContext, Delivery, HandlerGroup
from dianabot_core.telegram import metrics
from dianabot_core.telegram.broadcasts import ProgressReporter, broadcasts_of, notification_key
from dianabot_core.telegram.sender import SendOutcome, SendRequest, TelegramSender
from dianabot_core.telegram.templates import render

logger = logging.getLogger("dianabot.notifications")

# Retries outlast a long Telegram outage before a message is dead-lettered (then replayable).
RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0, 1800.0)


@dataclass(frozen=True)
class NotifiedUser:
    user_id: int
    chat_id: int
    language_code: str | None
    blocked: bool


async def load_recipients(session: AsyncSession, user_ids: set[int]) -> dict[int, NotifiedUser]:
    rows = await session.execute(
        select(User.id, User.telegram_id, User.language_code, User.bot_blocked_at.is_not(None)).where(
            User.id.in_(sorted(user_ids))
        )
    )
    return {r[0]: NotifiedUser(r[0], r[1], r[2], r[3]) for r in rows}


def message_for(event: NotificationRequested, recipient: NotifiedUser) -> MessageContent:
    if event.content is not None:
        return event.content
    assert event.template is not None  # the contract requires one of the two
    return render(event.template, event.params, recipient.language_code)


async def send_to_user(
    sender: TelegramSender, deliveries: list[Delivery[NotificationRequested]], recipient: NotifiedUser | None
) -> BaseException | None:
    """Send one user's notifications in order; stop at the first failure and return it."""
    for delivery in deliveries:
        event, key = delivery.payload, notification_key(delivery.envelope.event_id)
        if recipient is not None and recipient.blocked:
            metrics.SENDS.labels(event.priority.value, "skipped_blocked").inc()
            logger.info("user blocked the bot; notification skipped", extra={"user_id": event.user_id})
            continue
        try:
            content = _content_or_fail(event, recipient)
            assert recipient is not None
        except PermanentError as error:
            await sender.give_up(
                key,
                chat_id=recipient.chat_id if recipient else 0,
                user_id=event.user_id,
                priority=event.priority,
                reason=str(error),
            )
            return error
        request = SendRequest(
            key=key,
            chat_id=recipient.chat_id,
            content=content,
            priority=event.priority,
            resend_if_unknown=event.resend_if_unknown,
            user_id=event.user_id,
        )
        try:
            result = await sender.send(request)
        except Exception as error:
            return error
        if result.outcome is SendOutcome.BLOCKED:
            recipient = NotifiedUser(
                recipient.user_id, recipient.chat_id, recipient.language_code, blocked=True
            )
    return None


def _content_or_fail(event: NotificationRequested, recipient: NotifiedUser | None) -> MessageContent:
    if recipient is None:
        raise PermanentError(f"user {event.user_id} not found")
    return message_for(event, recipient)


def build_handlers(
    *,
    critical: TopicSpec = NOTIFICATIONS_CRITICAL,
    bulk: TopicSpec = NOTIFICATIONS_BULK,
    module: str = "notifications",
) -> HandlerGroup:
    """The notification handlers; tests pass their own topics (and module, hence groups)."""
    handlers = HandlerGroup(module)
    progress = ProgressReporter()

    @handlers.batch_handler(
        NotificationRequested,
        action="send",
        topics=(critical, bulk),
        # Small: a batch commits (effects and offsets) once all its sends are done, and sends run at
        # Telegram's pace (25/s for the whole bot, slower on a loaded machine); larger batches bought
        # nothing but minutes without a commit, repeated whole after a crash.
        batch_size=25,
        timeout_s=240,
        retry_delays_s=RETRY_DELAYS_S,
    )
    async def notifications_send_task(
        deliveries: Sequence[Delivery[NotificationRequested]], ctx: BatchContext[Services]
    ) -> None:
        """Load the recipients, send every user's messages (users in parallel), report broadcasts."""
        sender = ctx.services.sender
        recipients = await load_recipients(ctx.session, {d.payload.user_id for d in deliveries})
        by_user: dict[int, list[Delivery[NotificationRequested]]] = defaultdict(list)
        for delivery in deliveries:
            by_user[delivery.payload.user_id].append(delivery)
        limit = asyncio.Semaphore(sender.settings.parallel_sends)

        async def one_user(user_id: int) -> BaseException | None:
            async with limit:
                return await send_to_user(sender, by_user[user_id], recipients.get(user_id))

        failures = [f for f in await asyncio.gather(*(one_user(u) for u in by_user)) if f is not None]
        keys = [notification_key(d.envelope.event_id) for d in deliveries]
        for broadcast_id in await broadcasts_of(ctx.session, keys):
            await progress.report(ctx.session, broadcast_id)
        if failures:
            # The pipeline rolls the batch back and handles each event alone: sent ones are skipped
            # by the send ledger, and the failing one retries or dead-letters by itself.
            raise failures[0]

    return handlers


handlers = build_handlers()
