"""The one Telegram sender: every job's messages and member calls go through it, and only it calls aiogram.

A send (``send``) is, per part of the message:

1. ledger ``prepare`` — skip what is recorded as sent or blocked; apply the unknown-outcome policy;
2. a slot from the shared limits (``RateGate``): cluster-wide rate, per-chat interval, priority;
3. ledger ``start_attempt`` (intent, committed), the Bot API call, ledger ``finish`` (outcome, committed);
4. on 429: pause the bot (private chat) or the chat (group/channel) for ``retry_after``, in every
   process, and try again within this call's budget, else hand back a ``TransientError``;
   on a migrated group: record the new id and send there; 403 from a user: mark them blocked.

Member calls (ban, unban, invite links, join requests, reading a member) are idempotent on Telegram's
side, so they skip the ledger; they take slots from their own, slower lane and honour 429 the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    InputMediaVideo,
    Message,
)
from aiogram.types.media_union import MediaUnion
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.events import Button, Media, MessageContent, Priority
from core.clock import Clock, SystemClock
from core.settings import DatabaseSettings, Settings
from core.telegram import metrics
from core.telegram.content import Part, plan_parts
from core.telegram.errors import (
    Failure,
    FailureKind,
    OutcomeUnknown,
    SendInFlight,
    TelegramPermanentError,
    TelegramRateLimited,
    TelegramTransientError,
    classify_failure,
    is_missing_join_request,
    is_not_member,
)
from core.telegram.ledger import SendIntent, SendLedger, Verdict
from core.telegram.limits import Lane, RateGate
from core.telegram.models import SendStatus
from core.telegram.settings import SenderSettings

logger = logging.getLogger("dianabot.telegram")

SERVICE_KEY = "telegram"
"""The key of the sender in the pipeline's ``services`` mapping."""

T = TypeVar("T")
_MAX_MIGRATIONS = 2


class SendOutcome(StrEnum):
    SENT = "sent"
    ALREADY_SENT = "already_sent"  # the ledger has it as sent: nothing was called
    BLOCKED = "blocked"  # the user blocked the bot (now or before): nothing more is sent to them
    UNKNOWN = "unknown"  # cut off mid-call earlier or now, and not resent (resend_if_unknown=False)


@dataclass(frozen=True)
class SendRequest:
    """One message to one chat. `key` identifies it across redeliveries (e.g. ``notification:<event_id>``)."""

    key: str
    chat_id: int
    content: MessageContent
    priority: Priority = Priority.BULK
    resend_if_unknown: bool = False
    user_id: int | None = None


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    chat_id: int
    message_ids: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class ChatMemberInfo:
    status: str  # creator, administrator, member, restricted, left, kicked
    until: datetime | None = None


@dataclass(frozen=True)
class InviteLink:
    url: str
    expires_at: datetime


_SKIPPED = {
    SendStatus.SENT: SendOutcome.ALREADY_SENT,
    SendStatus.BLOCKED: SendOutcome.BLOCKED,
    SendStatus.UNKNOWN: SendOutcome.UNKNOWN,
    SendStatus.PENDING: SendOutcome.UNKNOWN,
}


class TelegramSender:
    """Build one per process with ``TelegramSender.create(settings)``; ``await close()`` at shutdown."""

    def __init__(
        self,
        bot: Bot,
        engine: AsyncEngine,
        settings: SenderSettings,
        *,
        clock: Clock | None = None,
        limits_engine: AsyncEngine | None = None,
    ) -> None:
        self.bot = bot
        self.engine = engine
        self.limits_engine = limits_engine or engine
        self.settings = settings
        self.clock = clock or SystemClock()
        self.ledger = SendLedger(engine, lease_s=settings.in_flight_lease_s)
        self.gate = RateGate(self.limits_engine, settings, bot.id)

    @classmethod
    def create(
        cls, settings: Settings, sender_settings: SenderSettings | None = None, *, clock: Clock | None = None
    ) -> TelegramSender:
        """The Bot on the configured API server, and the sender's own small connection pool."""
        sender_settings = sender_settings or SenderSettings()
        if sender_settings.in_flight_lease_s <= settings.telegram.request_timeout_s:
            raise ValueError("DIANABOT_SENDER__IN_FLIGHT_LEASE_S must exceed the Bot API request timeout")
        session = AiohttpSession(
            api=TelegramAPIServer.from_base(settings.telegram.api_base_url),
            timeout=settings.telegram.request_timeout_s,
        )
        bot = Bot(settings.telegram.bot_token.get_secret_value(), session=session)
        return cls(
            bot,
            ledger_engine(settings.database, sender_settings),
            sender_settings,
            clock=clock,
            limits_engine=ledger_engine(settings.database, sender_settings, durable=False),
        )

    async def close(self) -> None:
        await self.bot.session.close()
        await self.engine.dispose()
        if self.limits_engine is not self.engine:
            await self.limits_engine.dispose()

    # --- messages ---------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        """Deliver `request.content` at most once per recorded outcome; see the module docstring.

        Raises TelegramPermanentError (400, a group's 403, impossible content) and
        TelegramTransientError (5xx, network, a wait beyond the budget, an in-flight duplicate, or an
        unknown outcome the request wants resent).
        """
        deadline = time.monotonic() + self.settings.max_wait_in_call_s
        chat_id = request.chat_id
        ids: list[int | None] = []
        for index, part in enumerate(plan_parts(request.content)):
            key = request.key if index == 0 else f"{request.key}#{index}"
            outcome, chat_id, message_id = await self._send_part(request, part, key, chat_id, deadline)
            ids.append(message_id)
            if outcome in (SendOutcome.BLOCKED, SendOutcome.UNKNOWN):
                # The rest would only follow a part that may be missing (or go to a blocked user).
                break
        metrics.SENDS.labels(request.priority.value, outcome.value).inc()
        return SendResult(outcome, chat_id, tuple(ids))

    async def _send_part(
        self, request: SendRequest, part: Part, key: str, chat_id: int, deadline: float
    ) -> tuple[SendOutcome, int, int | None]:
        chat_id = await self.ledger.current_chat_id(chat_id)
        prepared = await self.ledger.prepare(
            self._intent(request, part, key, chat_id), resend_if_unknown=request.resend_if_unknown
        )
        if prepared.verdict is Verdict.IN_FLIGHT:
            raise SendInFlight(f"send {key} was started moments ago and has no outcome yet")
        if prepared.verdict is Verdict.SKIP:
            return _SKIPPED[prepared.status], chat_id, prepared.message_id
        migrations = 0
        while True:
            slot_at = await self.gate.wait_for_slot(chat_id, request.priority, deadline=deadline)
            paused = await self.ledger.start_attempt(
                self._intent(request, part, key, chat_id),
                resend_if_unknown=request.resend_if_unknown,
                pause_scopes=self.gate.pause_scopes(chat_id),
            )
            if paused is None:
                raise SendInFlight(f"another attempt of send {key} started first")
            if max(paused, self.gate.local_pause_left(chat_id)) > 0 or self.gate.too_late(slot_at):
                # A 429 arrived since the slot was reserved, or the slot has passed: nothing was
                # called; take a new slot.
                await self.ledger.finish(key, SendStatus.RETRY, error="slot lost before the call")
                await self.gate.release_chat(chat_id)
                continue
            try:
                message_id = await self._call_recorded(key, part, chat_id)
            except _Failed as failed:
                failure = failed.failure
                if failure.kind is FailureKind.MIGRATED and migrations < _MAX_MIGRATIONS:
                    migrations += 1
                    chat_id = await self._follow_migration(key, chat_id, failure)
                    continue
                if failure.kind is FailureKind.RETRY_AFTER:
                    await self._honour_retry_after(key, chat_id, failure, deadline)
                    continue
                return await self._give_up(key, request, chat_id, failure), chat_id, None
            return SendOutcome.SENT, chat_id, message_id

    @staticmethod
    def _intent(request: SendRequest, part: Part, key: str, chat_id: int) -> SendIntent:
        return SendIntent(key, chat_id, request.user_id, request.priority.value, part.method)

    async def _call_recorded(self, key: str, part: Part, chat_id: int) -> int | None:
        """The Bot API call between a committed intent and a committed outcome."""
        try:
            message_id = await self._timed(part.method, self._deliver(part, chat_id))
        except asyncio.CancelledError:
            # A handler time limit or shutdown: the request may have gone out.
            await asyncio.shield(self.ledger.finish(key, SendStatus.UNKNOWN, error="cancelled mid-call"))
            raise
        except Exception as error:
            raise _Failed(classify_failure(error)) from error
        await self.ledger.finish(key, SendStatus.SENT, message_id=message_id)
        return message_id

    async def _follow_migration(self, key: str, chat_id: int, failure: Failure) -> int:
        new_chat_id = failure.migrate_to_chat_id
        assert new_chat_id is not None
        await self.ledger.finish(key, SendStatus.RETRY, error=failure.description)
        await self.ledger.record_migration(chat_id, new_chat_id)
        logger.info("chat %s migrated to %s; resending there", chat_id, new_chat_id)
        return new_chat_id

    async def _honour_retry_after(self, key: str, chat_id: int, failure: Failure, deadline: float) -> None:
        # Telegram does not say which limit it was: a group's flood is that group's (20/min); a
        # private chat's is taken as the bot's, since pacing keeps each private chat far below 1/s.
        scopes: list[Lane | int] = [chat_id] if chat_id < 0 else ["global", chat_id]
        await self.gate.pause(scopes, failure.retry_after_s)  # first: other sends are about to go
        await self.ledger.finish(key, SendStatus.RETRY, error=failure.description)
        metrics.RATE_LIMITED.labels("chat" if chat_id < 0 else "global").inc()
        logger.warning(
            "429 from Telegram: pausing %s for %.0fs",
            "the chat" if chat_id < 0 else "the bot",
            failure.retry_after_s,
            extra={"chat_id": chat_id},
        )
        if time.monotonic() + failure.retry_after_s > deadline:
            raise TelegramRateLimited(f"retry after {failure.retry_after_s:.0f}s", failure.retry_after_s)

    async def _give_up(self, key: str, request: SendRequest, chat_id: int, failure: Failure) -> SendOutcome:
        """Record a final (or not-now) outcome; return it, or raise what the pipeline should see."""
        if failure.kind is FailureKind.FORBIDDEN and chat_id > 0:
            await self.ledger.finish(
                key, SendStatus.BLOCKED, error=failure.description, blocked_chat_id=chat_id
            )
            logger.info("user blocked the bot; marked", extra={"chat_id": chat_id})
            return SendOutcome.BLOCKED
        if failure.kind in (FailureKind.FORBIDDEN, FailureKind.BAD_REQUEST, FailureKind.MIGRATED):
            await self.ledger.finish(key, SendStatus.FAILED, error=failure.description)
            raise TelegramPermanentError(failure.description)
        if failure.kind is FailureKind.UNKNOWN:
            await self.ledger.finish(key, SendStatus.UNKNOWN, error=failure.description)
            logger.warning("send outcome unknown (%s)", failure.description, extra={"send_key": key})
            if request.resend_if_unknown:
                raise OutcomeUnknown(f"outcome unknown, will resend: {failure.description}")
            return SendOutcome.UNKNOWN
        await self.ledger.finish(key, SendStatus.RETRY, error=failure.description)
        raise TelegramTransientError(failure.description)

    async def _deliver(self, part: Part, chat_id: int) -> int | None:
        markup = _keyboard(part.buttons)
        protect = part.protect_content
        bot = self.bot
        if part.method == "sendMessage":
            message = await bot.send_message(
                chat_id, part.text or "", reply_markup=markup, protect_content=protect
            )
        elif part.method == "sendMediaGroup":
            sent = await bot.send_media_group(chat_id, _album(part), protect_content=protect)
            return sent[0].message_id if sent else None
        else:
            message = await self._send_single_media(part, chat_id, markup)
        return message.message_id

    async def _send_single_media(
        self, part: Part, chat_id: int, markup: InlineKeyboardMarkup | None
    ) -> Message:
        media = part.media[0]
        common: dict[str, Any] = {
            "caption": part.text,
            "reply_markup": markup,
            "protect_content": part.protect_content,
        }
        if media.kind == "photo":
            return await self.bot.send_photo(chat_id, media.file, **common)
        if media.kind == "video":
            return await self.bot.send_video(chat_id, media.file, **common)
        if media.kind == "animation":
            return await self.bot.send_animation(chat_id, media.file, **common)
        return await self.bot.send_document(chat_id, media.file, **common)

    @staticmethod
    async def _timed(method: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        result = "ok"
        try:
            return await call
        except asyncio.CancelledError:
            result = "cancelled"
            raise
        except Exception as error:
            result = classify_failure(error).kind.value
            raise
        finally:
            metrics.REQUESTS.labels(method, result).inc()
            metrics.REQUEST_SECONDS.labels(method).observe(time.perf_counter() - started)

    async def send_unrecorded(self, chat_id: int, text: str) -> None:
        """A plain text message with neither ledger nor shared limits, both of which live in PostgreSQL.

        Only for the monitoring watchdog telling the admin chat that PostgreSQL or Kafka is down;
        at most a few messages per incident, so Telegram's limits are not at risk. May duplicate.
        """
        await self._timed("sendMessage", self.bot.send_message(chat_id, text))

    # --- members and invite links -----------------------------------------------------------------

    async def ban_chat_member(self, chat_id: int, user_id: int, *, until: datetime | None = None) -> bool:
        """Remove the user from the chat; False when Telegram does not know them there (already gone)."""
        try:
            return await self._admin(
                "banChatMember",
                chat_id,
                lambda chat: self.bot.ban_chat_member(chat, user_id, until_date=until),
            )
        except TelegramPermanentError as error:
            if is_not_member(str(error)):
                return False
            raise

    async def unban_chat_member(self, chat_id: int, user_id: int) -> bool:
        """Lift a ban so the user may rejoin (only_if_banned: a current member is never removed)."""
        try:
            return await self._admin(
                "unbanChatMember",
                chat_id,
                lambda chat: self.bot.unban_chat_member(chat, user_id, only_if_banned=True),
            )
        except TelegramPermanentError as error:
            if is_not_member(str(error)):
                return False
            raise

    async def create_invite_link(
        self, chat_id: int, *, expires_in: timedelta, name: str | None = None
    ) -> InviteLink:
        """A single-use link (member_limit=1) that expires after `expires_in`."""
        expires_at = (self.clock.now() + expires_in).replace(microsecond=0)
        link = await self._admin(
            "createChatInviteLink",
            chat_id,
            lambda chat: self.bot.create_chat_invite_link(
                chat, name=name, expire_date=expires_at, member_limit=1
            ),
        )
        return InviteLink(link.invite_link, expires_at)

    async def approve_join_request(self, chat_id: int, user_id: int) -> bool:
        """Let the user in; False when there is no pending request (expired, withdrawn, already in)."""
        try:
            return await self._admin(
                "approveChatJoinRequest",
                chat_id,
                lambda chat: self.bot.approve_chat_join_request(chat, user_id),
            )
        except TelegramPermanentError as error:
            if is_missing_join_request(str(error)):
                return False
            raise

    async def get_chat_member(self, chat_id: int, user_id: int) -> ChatMemberInfo | None:
        """The user's status in the chat, or None when Telegram does not know them there."""
        try:
            member = await self._admin(
                "getChatMember", chat_id, lambda chat: self.bot.get_chat_member(chat, user_id)
            )
        except TelegramPermanentError as error:
            if is_not_member(str(error)):
                return None
            raise
        status = getattr(member.status, "value", member.status)
        return ChatMemberInfo(str(status), getattr(member, "until_date", None))

    async def _admin(self, method: str, chat_id: int, call: Callable[[int], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.settings.max_wait_in_call_s
        chat = await self.ledger.current_chat_id(chat_id)
        for _ in range(_MAX_MIGRATIONS + 1):
            slot_at = await self.gate.wait_for_slot(None, Priority.CRITICAL, lane="admin", deadline=deadline)
            if (paused := await self.gate.paused_for(None, "admin")) > 0 or self.gate.too_late(slot_at):
                await asyncio.sleep(paused)
                continue
            try:
                return await self._timed(method, call(chat))
            except Exception as error:
                failure = classify_failure(error)
            if failure.kind is FailureKind.MIGRATED and failure.migrate_to_chat_id is not None:
                await self.ledger.record_migration(chat, failure.migrate_to_chat_id)
                chat = failure.migrate_to_chat_id
            elif failure.kind is FailureKind.RETRY_AFTER:
                await self.gate.pause(["admin"], failure.retry_after_s)
                metrics.RATE_LIMITED.labels("admin").inc()
                if time.monotonic() + failure.retry_after_s > deadline:
                    raise TelegramRateLimited(
                        f"retry after {failure.retry_after_s:.0f}s", failure.retry_after_s
                    )
            elif failure.kind in (FailureKind.FORBIDDEN, FailureKind.BAD_REQUEST):
                raise TelegramPermanentError(failure.description)
            else:
                raise TelegramTransientError(failure.description)
        raise TelegramTransientError(f"{method}: chat {chat_id} keeps migrating")


def ledger_engine(database: DatabaseSettings, sender: SenderSettings, *, durable: bool = True) -> AsyncEngine:
    """Autocommit connections for the ledger (durable) or the limits: every step is one statement.

    Its own pool: a handler holds a connection for its unit of work while it waits on the sender,
    so sharing one pool could leave the sender without a connection to record an outcome with.
    No pre-ping: it would double the round trips; a connection broken by a database restart fails
    one send, which the pipeline retries. The limits' state is worth less than a disk flush per
    send (``durable=False``: synchronous_commit off): a database crash loses at most its last
    fraction of a second, while every process sits waiting for the database anyway.
    """
    return create_async_engine(
        database.url.get_secret_value(),
        pool_size=sender.db_pool_size,
        max_overflow=sender.db_pool_size,
        isolation_level="AUTOCOMMIT",
        hide_parameters=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(database.statement_timeout_ms),
                "application_name": "dianabot-sender",
                "synchronous_commit": "on" if durable else "off",
            }
        },
    )


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.description)
        self.failure = failure


def _keyboard(rows: tuple[tuple[Button, ...], ...]) -> InlineKeyboardMarkup | None:
    if not rows:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=b.text, url=b.url, callback_data=b.callback_data) for b in row]
            for row in rows
        ]
    )


def _album(part: Part) -> list[MediaUnion]:
    items: list[MediaUnion] = []
    for index, media in enumerate(part.media):
        caption = part.text if index == 0 else None
        items.append(_album_item(media, caption))
    return items


def _album_item(media: Media, caption: str | None) -> InputMediaPhoto | InputMediaVideo | InputMediaDocument:
    if media.kind == "photo":
        return InputMediaPhoto(media=media.file, caption=caption)
    if media.kind == "video":
        return InputMediaVideo(media=media.file, caption=caption)
    return InputMediaDocument(media=media.file, caption=caption)


def sender_from(services: Mapping[str, Any]) -> TelegramSender:
    """The sender the composition root put into the pipeline's services."""
    sender = services.get(SERVICE_KEY)
    if not isinstance(sender, TelegramSender):
        # Not a PermanentError: a wiring mistake must not dead-letter every message.
        raise RuntimeError(f"no TelegramSender in the pipeline services under {SERVICE_KEY!r}")
    return sender


def content_summary(content: MessageContent) -> str:
    """A short, log-safe description of a message (never its text)."""
    kinds = ",".join(m.kind for m in content.media) or "text"
    return f"{kinds} ({len(content.text or '')} chars, {sum(len(r) for r in content.buttons)} buttons)"
