"""Member calls: ban, unban, invite links, join requests, reading a member.

They are idempotent on Telegram's side, so they skip the send ledger; they take slots from their
own, slower lane (``admin``) of the shared limits and honour 429 the same way messages do.
``TelegramSender`` inherits them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from aiogram import Bot

from dianabot_contracts.events import Priority
from dianabot_core.clock import Clock
from dianabot_core.telegram import metrics
from dianabot_core.telegram.calls import classified, timed
from dianabot_core.telegram.errors import (
    ApiFailureKind,
    TelegramPermanentError,
    TelegramRateLimited,
    TelegramTransientError,
    is_missing_join_request,
    is_not_member,
)
from dianabot_core.telegram.ledger import SendLedger
from dianabot_core.telegram.limits import RateGate
from dianabot_core.telegram.settings import SenderSettings

T = TypeVar("T")
MAX_MIGRATIONS = 2


@dataclass(frozen=True)
class ChatMemberInfo:
    status: str  # creator, administrator, member, restricted, left, kicked
    until: datetime | None = None


@dataclass(frozen=True)
class InviteLink:
    url: str
    expires_at: datetime


class MemberCalls:
    """The member calls of ``TelegramSender`` (which sets these attributes)."""

    bot: Bot
    ledger: SendLedger
    gate: RateGate
    settings: SenderSettings
    clock: Clock

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
        for _ in range(MAX_MIGRATIONS + 1):
            slot = await self.gate.wait_for_slot(
                None, Priority.CRITICAL, lane="admin", deadline=deadline, lead_s=self.gate.pause_read_lead_s()
            )
            paused = await self.gate.paused_for_slot(slot, None, "admin")
            await self.gate.until(slot)
            paused = max(paused, self.gate.local_pause_left(None, "admin"))
            if paused > 0 or self.gate.too_late(slot):
                await asyncio.sleep(paused)
                continue
            try:
                return await timed(method, call(chat))
            except Exception as error:
                failure = classified(error)
            if failure.kind is ApiFailureKind.MIGRATED and failure.migrate_to_chat_id is not None:
                await self.ledger.record_migration(chat, failure.migrate_to_chat_id)
                chat = failure.migrate_to_chat_id
            elif failure.kind is ApiFailureKind.RETRY_AFTER:
                await self.gate.pause(["admin"], failure.retry_after_s)
                metrics.RATE_LIMITED.labels("admin").inc()
                if time.monotonic() + failure.retry_after_s > deadline:
                    raise TelegramRateLimited(
                        f"retry after {failure.retry_after_s:.0f}s", failure.retry_after_s
                    )
            elif failure.kind in (ApiFailureKind.FORBIDDEN, ApiFailureKind.BAD_REQUEST):
                raise TelegramPermanentError(failure.description)
            else:
                raise TelegramTransientError(failure.description)
        raise TelegramTransientError(f"{method}: chat {chat_id} keeps migrating")
