"""The send ledger: intent before each Bot API call, outcome after, each committed on its own.

``sendMessage`` has no idempotency key, so exactly-once is impossible; the ledger makes the gap
small and visible instead. Per send key:

1. ``prepare`` (a read) — is there anything to do? ``sent``/``blocked`` → no (a redelivered event
   is not sent again). ``unknown``, or ``pending`` older than the in-flight lease (the process died
   or timed out mid-call) → only if the notification's ``resend_if_unknown`` says so; a younger
   ``pending`` is another attempt still in flight → retry later.
2. ``start_attempt`` — insert or compare-and-set to ``pending`` right before the call (one winner
   per key): the intent, committed. It returns the attempt's number (``attempts``).
3. ``finish`` — ``sent`` with the message id, ``retry`` (not delivered: 429, 5xx, refused
   connection), ``unknown`` (cut off mid-call), ``blocked`` (and ``users.bot_blocked_at`` set in the
   same statement) or ``failed`` with the error. It is fenced on the attempt's number: a late
   outcome of an attempt whose lease ran out, after a newer attempt started, changes nothing.

Each step is one statement on the sender's own autocommit connections, never the handler's unit of
work: that transaction may still roll back (the batch falls back to one-by-one handling, a later
event fails), and a message that went out must stay recorded as sent regardless.

The window: between ``start_attempt`` and ``finish`` a crash leaves ``pending``; the message may or
may not have been delivered. After the lease it reads as unknown (``unknown_sends`` lists both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dianabot_core.db import delete_batch
from dianabot_core.telegram import metrics
from dianabot_core.telegram.models import SendStatus, TelegramSend

# Statuses from which a new attempt may start regardless of policy. FAILED is here because the
# pipeline never redelivers a permanent failure by itself: a repeat is an operator's replay.
_ATTEMPTABLE = (SendStatus.NEW, SendStatus.RETRY, SendStatus.FAILED)

_PREPARE = text(
    """
    SELECT status, telegram_message_id, extract(epoch FROM clock_timestamp() - attempted_at)::float8
    FROM telegram_sends WHERE send_key = :key
    """
)
_EXPIRE_PENDING = text(
    """
    UPDATE telegram_sends
    SET status = 'unknown', error = 'no outcome recorded within the lease', finished_at = clock_timestamp()
    WHERE send_key = :key AND status = 'pending'
      AND attempted_at < clock_timestamp() - make_interval(secs => :lease)
    """
)
_START = text(
    """
    INSERT INTO telegram_sends AS s
        (send_key, chat_id, user_id, priority, method, status, attempts, attempted_at)
    VALUES (:key, :chat_id, :user_id, :priority, :method, 'pending', 1, clock_timestamp())
    ON CONFLICT (send_key) DO UPDATE
    SET status = 'pending', chat_id = EXCLUDED.chat_id, attempts = s.attempts + 1,
        attempted_at = EXCLUDED.attempted_at, finished_at = NULL
    WHERE s.status = ANY(CAST(:allowed AS varchar[]))
    RETURNING s.attempts, (
        SELECT coalesce(max(extract(epoch FROM paused_until - clock_timestamp())), 0)::float8
        FROM telegram_rate_limits WHERE scope = ANY(CAST(:pause_scopes AS varchar[]))
    )
    """
)
# Fenced on the attempt: only the attempt that set `pending` may record its outcome. The status
# is not part of the fence, so an attempt that outlived its lease (now `unknown`) may still say
# what became of it.
_FINISH = """
    UPDATE telegram_sends
    SET status = :status, telegram_message_id = coalesce(:message_id, telegram_message_id),
        error = :error, finished_at = clock_timestamp()
    WHERE send_key = :key AND attempts = :attempt
    RETURNING 1
"""
_FINISH_PLAIN = text(_FINISH)
# A 403 marks the user whichever attempt learnt it: it is a fact about the user, not the send.
_FINISH_BLOCKED = text(
    f"""
    WITH outcome AS ({_FINISH}),
    blocked AS (
        UPDATE users SET bot_blocked_at = now()
        WHERE telegram_id = :chat_id AND bot_blocked_at IS NULL
        RETURNING id
    )
    SELECT (SELECT count(*) FROM outcome), (SELECT count(*) FROM blocked)
    """
)
_GIVE_UP = text(
    """
    INSERT INTO telegram_sends (send_key, chat_id, user_id, priority, method, status, error, finished_at)
    VALUES (:key, :chat_id, :user_id, :priority, :method, 'failed', :error, clock_timestamp())
    ON CONFLICT (send_key) DO UPDATE
    SET status = 'failed', error = EXCLUDED.error, finished_at = EXCLUDED.finished_at
    WHERE telegram_sends.status IN ('new', 'retry', 'failed')
    """
)
_CURRENT_CHAT = text("SELECT new_chat_id FROM telegram_chat_migrations WHERE old_chat_id = :chat_id")
_RECORD_MIGRATION = text(
    """
    WITH migration AS (
        INSERT INTO telegram_chat_migrations (old_chat_id, new_chat_id) VALUES (:old, :new)
        ON CONFLICT (old_chat_id) DO UPDATE SET new_chat_id = EXCLUDED.new_chat_id
    )
    UPDATE channels SET telegram_chat_id = :new
    WHERE telegram_chat_id = :old AND NOT EXISTS (SELECT FROM channels WHERE telegram_chat_id = :new)
    """
)


class Verdict(StrEnum):
    SEND = "send"
    SKIP = "skip"  # the recorded status is the outcome
    IN_FLIGHT = "in_flight"


def verdict(status: SendStatus, age_s: float | None, *, resend_if_unknown: bool, lease_s: float) -> Verdict:
    """What to do with a send given its ledger status (``age_s``: seconds since its last attempt)."""
    if status in _ATTEMPTABLE:
        return Verdict.SEND
    if status is SendStatus.PENDING and age_s is not None and age_s < lease_s:
        return Verdict.IN_FLIGHT
    if status in (SendStatus.PENDING, SendStatus.UNKNOWN):
        return Verdict.SEND if resend_if_unknown else Verdict.SKIP
    return Verdict.SKIP  # sent, blocked


@dataclass(frozen=True)
class Prepared:
    verdict: Verdict
    status: SendStatus
    message_id: int | None = None


@dataclass(frozen=True)
class Attempt:
    """One attempt of a send, as ``start_attempt`` recorded it: its outcome is recorded against it."""

    key: str
    number: int
    paused_s: float = 0.0  # seconds left of a 429 pause covering the send: above zero, do not call


@dataclass(frozen=True)
class SendIntent:
    key: str
    chat_id: int
    user_id: int | None
    priority: str
    method: str

    def params(self) -> dict[str, object]:
        return {
            "key": self.key,
            "chat_id": self.chat_id,
            "user_id": self.user_id,
            "priority": str(self.priority),
            "method": self.method,
        }


class SendLedger:
    """The ledger's statements, each one round trip on an autocommit connection of `engine`."""

    def __init__(self, engine: AsyncEngine, *, lease_s: float) -> None:
        self._engine = engine
        self._lease_s = lease_s

    async def prepare(self, intent: SendIntent, *, resend_if_unknown: bool) -> Prepared:
        """Is there anything to send? (see the module docstring). A read: nothing is committed.

        Read before a rate-limit slot is taken, so a redelivered batch does not spend slots on
        messages that went out already.
        """
        async with self._engine.connect() as connection:
            row = (await connection.execute(_PREPARE, {"key": intent.key})).one_or_none()
            if row is None:
                return Prepared(Verdict.SEND, SendStatus.NEW)
            status, message_id, age = SendStatus(row[0]), row[1], row[2]
            decided = verdict(status, age, resend_if_unknown=resend_if_unknown, lease_s=self._lease_s)
            if status is SendStatus.PENDING and decided is not Verdict.IN_FLIGHT:
                # The attempt outlived its lease: whatever happened is now officially unknown.
                await connection.execute(_EXPIRE_PENDING, {"key": intent.key, "lease": self._lease_s})
                status = SendStatus.UNKNOWN
        return Prepared(decided, status, message_id)

    async def start_attempt(
        self, intent: SendIntent, *, resend_if_unknown: bool, pause_scopes: Sequence[str]
    ) -> Attempt | None:
        """Record the intent right before the call (one commit); None if another attempt got there first.

        In the same statement it reads the 429 pauses covering the send (`pause_scopes`): the
        attempt's ``paused_s`` is the seconds left of the longest.
        """
        allowed = [s.value for s in _ATTEMPTABLE] + ([SendStatus.UNKNOWN.value] if resend_if_unknown else [])
        params = {**intent.params(), "allowed": allowed, "pause_scopes": list(pause_scopes)}
        async with self._engine.connect() as connection:
            row = (await connection.execute(_START, params)).one_or_none()
        return None if row is None else Attempt(intent.key, int(row[0]), max(0.0, float(row[1])))

    async def finish(
        self,
        attempt: Attempt,
        status: SendStatus,
        *,
        message_id: int | None = None,
        error: str | None = None,
        blocked_chat_id: int | None = None,
    ) -> bool:
        """Record the outcome of `attempt`; a 403 also marks the user (same statement).

        False when a newer attempt of the send has started since: its outcome is that attempt's to record.
        """
        params = {
            "key": attempt.key,
            "attempt": attempt.number,
            "status": status.value,
            "message_id": message_id,
            "error": error,
        }
        async with self._engine.connect() as connection:
            if blocked_chat_id is None:
                return (await connection.execute(_FINISH_PLAIN, params)).first() is not None
            recorded, newly = (
                await connection.execute(_FINISH_BLOCKED, {**params, "chat_id": blocked_chat_id})
            ).one()
        metrics.BLOCKED_USERS.inc(newly)
        return bool(recorded)

    async def status_of(self, key: str) -> SendStatus | None:
        """The recorded status of a send, None if it was never attempted."""
        async with self._engine.connect() as connection:
            row = (await connection.execute(_PREPARE, {"key": key})).one_or_none()
        return None if row is None else SendStatus(row[0])

    async def give_up(self, intent: SendIntent, error: str) -> None:
        """Record a send that fails before any call (unknown user, unrenderable template) as failed."""
        async with self._engine.connect() as connection:
            await connection.execute(_GIVE_UP, {**intent.params(), "error": error})

    # --- chat migrations --------------------------------------------------------------------------

    async def current_chat_id(self, chat_id: int) -> int:
        """The chat a send goes to: a group that became a supergroup is addressed by its new id."""
        if chat_id > 0:  # private chats never migrate
            return chat_id
        async with self._engine.connect() as connection:
            new_id = await connection.scalar(_CURRENT_CHAT, {"chat_id": chat_id})
        return chat_id if new_id is None else int(new_id)

    async def record_migration(self, old_chat_id: int, new_chat_id: int) -> None:
        """Remember the new id, and move a channel row that still names the old one (one statement)."""
        async with self._engine.connect() as connection:
            await connection.execute(_RECORD_MIGRATION, {"old": old_chat_id, "new": new_chat_id})


@dataclass(frozen=True)
class UnknownSend:
    send_key: str
    chat_id: int
    user_id: int | None
    status: SendStatus
    attempts: int
    attempted_at: datetime | None


async def unknown_sends(session: AsyncSession, *, lease_s: float, limit: int = 100) -> list[UnknownSend]:
    """Sends that may or may not have been delivered: ``unknown``, or ``pending`` past the lease."""
    stale = func.now() - timedelta(seconds=lease_s)
    rows = await session.execute(
        select(
            TelegramSend.send_key,
            TelegramSend.chat_id,
            TelegramSend.user_id,
            TelegramSend.status,
            TelegramSend.attempts,
            TelegramSend.attempted_at,
        )
        .where(
            or_(
                TelegramSend.status == SendStatus.UNKNOWN,
                (TelegramSend.status == SendStatus.PENDING) & (TelegramSend.attempted_at < stale),
            )
        )
        .order_by(TelegramSend.attempted_at)
        .limit(limit)
    )
    return [UnknownSend(r[0], r[1], r[2], SendStatus(r[3]), r[4], r[5]) for r in rows]


async def purge_sends_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of sends whose last activity (outcome, else attempt, else creation)
    is older than ``cutoff``; call until it returns 0.

    A row still ``pending`` or ``unknown`` goes only once it is that old too: by then every event
    that could send it again is past the topics' retention and the processed-events ledger's.
    """
    last_activity = func.coalesce(
        TelegramSend.finished_at, TelegramSend.attempted_at, TelegramSend.created_at
    )
    return await delete_batch(session, TelegramSend.id, where=last_activity < cutoff, batch_size=batch_size)
