"""The one Telegram sender: every job's messages and member calls go through it, and only it calls aiogram.

A send (``send``) is, per part of the message:

1. ledger ``prepare`` — skip what is recorded as sent or blocked; apply the unknown-outcome policy;
2. a slot from the shared limits (``RateGate``): cluster-wide rate, per-chat interval, priority;
3. ledger ``start_attempt`` (intent, committed), the Bot API call, ledger ``finish`` (outcome, committed);
   both ledger steps run to their end even when the send is cancelled meanwhile (a handler's time
   limit, shutdown), so a message Telegram took is recorded as sent, and one never called as retry;
4. on 429: pause the bot (private chat) or the chat (group/channel) for ``retry_after``, in every
   process, and try again within this call's budget, else hand back a ``TransientError``;
   on a migrated group: record the new id and send there; 403 from a user: mark them blocked.

Member calls (ban, unban, invite links, join requests, reading a member) are in
``dianabot_core.telegram.members``: they skip the ledger and take slots from their own, slower lane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dianabot_contracts.events import MessageContent, Priority
from dianabot_core.clock import Clock, SystemClock
from dianabot_core.settings import DatabaseSettings, Settings
from dianabot_core.telegram import metrics
from dianabot_core.telegram.calls import classified, deliver, timed
from dianabot_core.telegram.content import Part, plan_parts
from dianabot_core.telegram.errors import (
    ApiFailureKind,
    Failure,
    OutcomeUnknown,
    SendInFlight,
    TelegramPermanentError,
    TelegramRateLimited,
    TelegramTransientError,
)
from dianabot_core.telegram.ledger import Attempt, SendIntent, SendLedger, Verdict
from dianabot_core.telegram.limits import Lane, RateGate, Slot
from dianabot_core.telegram.members import MAX_MIGRATIONS, MemberCalls
from dianabot_core.telegram.models import SendStatus
from dianabot_core.telegram.settings import SenderSettings

logger = logging.getLogger("dianabot.telegram")

T = TypeVar("T")
# The intent is recorded this long before its slot at most (see `IntentLead`). Off (0): with a lead,
# a 429 storm test saw one send inside an announced retry_after in CI; the intent kept across a lost
# slot is what ends the livelock (each message still attempted once).
_MAX_INTENT_LEAD_S = 0.0
# How long a cancelled send still waits for its ledger step (one statement) to commit; past it the
# row stays `pending` and reads as unknown after the lease, as after a crash.
_LEDGER_STEP_WITHIN_S = 10.0


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


_SKIPPED = {
    SendStatus.SENT: SendOutcome.ALREADY_SENT,
    SendStatus.BLOCKED: SendOutcome.BLOCKED,
    SendStatus.UNKNOWN: SendOutcome.UNKNOWN,
    SendStatus.PENDING: SendOutcome.UNKNOWN,
}


class IntentLead:
    """How long before its slot a send records its intent: the slowest of the recent intents.

    The intent is a durable commit; counted inside the slot, its latency under load (disk flushes,
    a busy machine) made most slots "late" and given up, each costing the bot a global slot, so a
    loaded process sent almost nothing. Taking it ahead keeps the call on its slot; the price is a
    window of at most `_MAX_INTENT_LEAD_S` in which a crash leaves an unsent message `pending`.
    """

    def __init__(self, keep: int = 32) -> None:
        self._recent: deque[float] = deque(maxlen=keep)

    def seconds(self) -> float:
        return min(_MAX_INTENT_LEAD_S, max(self._recent, default=0.0))

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)


class TelegramSender(MemberCalls):
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
        self._intent_lead = IntentLead()

    @classmethod
    def create(
        cls, settings: Settings, sender_settings: SenderSettings | None = None, *, clock: Clock | None = None
    ) -> TelegramSender:
        """The Bot on the configured API server, and the sender's own small connection pool."""
        sender_settings = sender_settings or settings.sender
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
        attempt: Attempt | None = None  # an intent kept across a lost slot
        while True:
            slot, attempt, paused = await self._slot_and_intent(
                request, part, key, chat_id, deadline, attempt
            )
            # The local check last, with no await between it and the call: a 429 this process
            # received while the database was being read is known here only.
            if paused or self.gate.local_pause_left(chat_id) > 0:
                # A 429 arrived since the slot was reserved: nothing was called; take a new slot.
                await self._finish(attempt, SendStatus.RETRY, error="slot lost to a 429 pause")
                await self.gate.release_chat(chat_id)
                attempt = None
                continue
            if self.gate.too_late(slot):
                # A stalled loop: calling now could bunch up with the next slots. Nothing was called;
                # the intent stays, so the next slot is not also spent waiting for its commit.
                await self.gate.release_chat(chat_id)
                continue
            message_id, failure = await self._call_recorded(attempt, part, chat_id)
            if failure is None:
                return SendOutcome.SENT, chat_id, message_id
            if failure.kind is ApiFailureKind.MIGRATED and migrations < MAX_MIGRATIONS:
                migrations += 1
                chat_id = await self._follow_migration(attempt, chat_id, failure)
                attempt = None
                continue
            if failure.kind is ApiFailureKind.RETRY_AFTER:
                await self._honour_retry_after(attempt, chat_id, failure, deadline)
                attempt = None
                continue
            return await self._give_up(attempt, request, chat_id, failure), chat_id, None

    async def _slot_and_intent(
        self,
        request: SendRequest,
        part: Part,
        key: str,
        chat_id: int,
        deadline: float,
        attempt: Attempt | None,
    ) -> tuple[Slot, Attempt, bool]:
        """Wait for a slot, recording the intent (unless one is kept) or reading the 429 pauses in
        its lead; return at the slot, with whether a pause recorded in the database covers it.

        A kept intent is finished as ``retry`` if the wait fails or is cancelled: nothing was called.
        """
        try:
            # A kept intent (its slot was lost) has one round trip left, the pause check: it is
            # taken before the slot, so the call is on time on a loaded machine too.
            lead_s = self._intent_lead.seconds() if attempt is None else self.gate.pause_read_lead_s()
            slot = await self.gate.wait_for_slot(chat_id, request.priority, deadline=deadline, lead_s=lead_s)
            if attempt is None:
                started = time.monotonic()
                attempt = await self._start_attempt(self._intent(request, part, key, chat_id), request)
                self._intent_lead.observe(time.monotonic() - started)
                if attempt is None:
                    raise SendInFlight(f"another attempt of send {key} started first")
                paused = attempt.paused_s > 0  # read in the intent's own statement
            else:
                paused = await self.gate.paused_for_slot(slot, chat_id) > 0
            await self.gate.until(slot)
        except BaseException:
            if attempt is not None:
                await self._finish(attempt, SendStatus.RETRY, error="no slot: nothing was called")
            raise
        return slot, attempt, paused

    @staticmethod
    def _intent(request: SendRequest, part: Part, key: str, chat_id: int) -> SendIntent:
        return SendIntent(key, chat_id, request.user_id, request.priority.value, part.method)

    async def _start_attempt(self, intent: SendIntent, request: SendRequest) -> Attempt | None:
        """The intent, committed. Cancelled meanwhile, it still commits, and is then recorded as
        ``retry`` (nothing was called): left ``pending``, it would read as unknown, never resent."""
        started, cancelled = await _settled(
            self.ledger.start_attempt(
                intent,
                resend_if_unknown=request.resend_if_unknown,
                pause_scopes=self.gate.pause_scopes(intent.chat_id),
            )
        )
        if cancelled is None:
            return started.result()
        if not started.cancelled() and started.exception() is None and (attempt := started.result()):
            await self._finish(attempt, SendStatus.RETRY, error="cancelled before the call")
        raise cancelled

    async def _call_recorded(
        self, attempt: Attempt, part: Part, chat_id: int
    ) -> tuple[int | None, Failure | None]:
        """The Bot API call between a committed intent and a committed outcome: the message id, or
        why it failed."""
        try:
            message_id = await timed(part.method, deliver(self.bot, part, chat_id))
        except asyncio.CancelledError:
            # A handler time limit or shutdown: the request may have gone out.
            await self._finish(attempt, SendStatus.UNKNOWN, error="cancelled mid-call")
            raise
        except Exception as error:
            failure = classified(error)
        else:
            await self._finish(attempt, SendStatus.SENT, message_id=message_id)
            return message_id, None
        # Returned, not raised from the except block: what the pipeline sees must not chain
        # aiohttp's error, whose text may quote the request URL, and so the bot token.
        return None, failure

    async def _finish(
        self,
        attempt: Attempt,
        status: SendStatus,
        *,
        message_id: int | None = None,
        error: str | None = None,
        blocked_chat_id: int | None = None,
    ) -> None:
        """Record `attempt`'s outcome, to the end even when the send is cancelled meanwhile: a message
        Telegram took must not stay ``pending``, to be counted unknown or sent again. A cancellation
        is passed on once the outcome is committed."""
        finished, cancelled = await _settled(
            self.ledger.finish(
                attempt, status, message_id=message_id, error=error, blocked_chat_id=blocked_chat_id
            )
        )
        if cancelled is not None:
            if not finished.cancelled() and (failed := finished.exception()) is not None:
                logger.warning(
                    "send %s: outcome %s not recorded: %s",
                    attempt.key,
                    status.value,
                    type(failed).__name__,
                    extra={"send_key": attempt.key},
                )
            raise cancelled
        if not finished.result():
            logger.warning(
                "send %s: outcome %s of attempt %d not recorded: a newer attempt started after its lease",
                attempt.key,
                status.value,
                attempt.number,
                extra={"send_key": attempt.key},
            )

    async def _follow_migration(self, attempt: Attempt, chat_id: int, failure: Failure) -> int:
        new_chat_id = failure.migrate_to_chat_id
        assert new_chat_id is not None
        await self._finish(attempt, SendStatus.RETRY, error=failure.description)
        await self.ledger.record_migration(chat_id, new_chat_id)
        logger.info("chat %s migrated to %s; resending there", chat_id, new_chat_id)
        return new_chat_id

    async def _honour_retry_after(
        self, attempt: Attempt, chat_id: int, failure: Failure, deadline: float
    ) -> None:
        # Telegram does not say which limit it was: a group's flood is that group's (20/min); a
        # private chat's is taken as the bot's, since pacing keeps each private chat far below 1/s.
        scopes: list[Lane | int] = [chat_id] if chat_id < 0 else ["global", chat_id]
        await self.gate.pause(scopes, failure.retry_after_s)  # first: other sends are about to go
        await self._finish(attempt, SendStatus.RETRY, error=failure.description)
        metrics.RATE_LIMITED.labels("chat" if chat_id < 0 else "global").inc()
        logger.warning(
            "429 from Telegram: pausing %s for %.0fs",
            "the chat" if chat_id < 0 else "the bot",
            failure.retry_after_s,
            extra={"chat_id": chat_id},
        )
        if time.monotonic() + failure.retry_after_s > deadline:
            raise TelegramRateLimited(f"retry after {failure.retry_after_s:.0f}s", failure.retry_after_s)

    async def _give_up(
        self, attempt: Attempt, request: SendRequest, chat_id: int, failure: Failure
    ) -> SendOutcome:
        """Record a final (or not-now) outcome; return it, or raise what the pipeline should see."""
        if failure.kind is ApiFailureKind.FORBIDDEN and chat_id > 0:
            await self._finish(
                attempt, SendStatus.BLOCKED, error=failure.description, blocked_chat_id=chat_id
            )
            logger.info("user blocked the bot; marked", extra={"chat_id": chat_id})
            return SendOutcome.BLOCKED
        if failure.kind in (ApiFailureKind.FORBIDDEN, ApiFailureKind.BAD_REQUEST, ApiFailureKind.MIGRATED):
            await self._finish(attempt, SendStatus.FAILED, error=failure.description)
            raise TelegramPermanentError(failure.description)
        if failure.kind is ApiFailureKind.UNKNOWN:
            await self._finish(attempt, SendStatus.UNKNOWN, error=failure.description)
            logger.warning("send outcome unknown (%s)", failure.description, extra={"send_key": attempt.key})
            if request.resend_if_unknown:
                raise OutcomeUnknown(f"outcome unknown, will resend: {failure.description}")
            return SendOutcome.UNKNOWN
        await self._finish(attempt, SendStatus.RETRY, error=failure.description)
        raise TelegramTransientError(failure.description)

    async def give_up(
        self, key: str, *, chat_id: int, user_id: int | None, priority: Priority, reason: str
    ) -> None:
        """Record a message that cannot be sent at all (an unknown user, content that does not
        render) as failed, with the reason, where operators look for sends."""
        await self.ledger.give_up(SendIntent(key, chat_id, user_id, priority.value, "-"), reason)

    async def was_delivered(self, key: str) -> bool:
        """True if the message went out, may have gone out (unknown outcome), or was refused for a
        user who blocked the bot: in each case nothing more should be prepared for it."""
        status = await self.ledger.status_of(key)
        return status in (SendStatus.SENT, SendStatus.UNKNOWN, SendStatus.BLOCKED)

    async def send_unrecorded(self, chat_id: int, text: str) -> None:
        """A plain text message with neither ledger nor shared limits, both of which live in PostgreSQL.

        Only for the monitoring watchdog telling the admin chat that PostgreSQL or Kafka is down;
        at most a few messages per incident, so Telegram's limits are not at risk. May duplicate.
        Raises TelegramTransientError.
        """
        try:
            await timed("sendMessage", self.bot.send_message(chat_id, text))
        except Exception as error:
            failure = classified(error)
        else:
            return
        raise TelegramTransientError(failure.description)  # not chained: see _call_recorded


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


async def _settled(step: Coroutine[Any, Any, T]) -> tuple[asyncio.Task[T], asyncio.CancelledError | None]:
    """Run a ledger step to its end (at most _LEDGER_STEP_WITHIN_S) even if the caller is cancelled
    meanwhile: the finished step, and the cancellation the caller must pass on (None if none came)."""
    task = asyncio.create_task(asyncio.wait_for(step, _LEDGER_STEP_WITHIN_S))
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])  # unlike awaiting the task, cancelling this leaves it running
        except asyncio.CancelledError as error:
            cancelled = error
    return task, cancelled
