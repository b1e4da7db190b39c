"""Cluster-wide send limits: a token bucket shared through PostgreSQL.

Every send reserves a *slot* (a moment at which it may call Telegram) in ``telegram_rate_limits``:
the bot's ``global`` scope hands out slots ``1 / rate`` seconds apart (GCRA: one "next free time"
per scope), and the chat's scope keeps one chat's messages ``private_chat_interval_s`` (or
``group_interval_s``) apart. Any number of processes share one timeline; each sleeps until its
slot, measured by the database's clock (no skew between hosts).

The reservation is one call of the SQL function ``telegram_reserve_slot`` (see the migration
``telegram send ledger and broadcasts``): it locks the chat's and the bot's rows, decides and books
in one statement, so the bot's row is locked for microseconds. A transaction driven from Python
would hold that lock across several round trips and the event loop's latency, and the one row
every send goes through would become the cluster's throughput ceiling.

Priorities: a bulk send may only reserve a slot at most ``bulk_horizon_s`` ahead; a critical one
takes the next free slot however far it is. So bulk traffic never holds more than the horizon's
worth of slots, and a critical message waits at most that long behind any amount of bulk.

429: ``pause`` pushes a scope's next free time past ``retry_after`` and records ``paused_until``;
a slot reserved before the pause is re-checked just before the call (the ledger's claim reads
the pause in the same statement, and a pause this process learnt of is checked in memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dianabot_contracts.events import Priority
from dianabot_core.telegram import metrics
from dianabot_core.telegram.errors import TelegramRateLimited
from dianabot_core.telegram.settings import SenderSettings

logger = logging.getLogger("dianabot.telegram.limits")

Lane = Literal["global", "admin"]
# A critical send waiting longer than this for its slot is logged with why.
_SLOW_CRITICAL_S = 1.0
# How many grants between two sweeps of idle per-chat rows.
_SWEEP_EVERY = 2000
# The longest lead taken to read 429 pauses before a slot booked ahead.
_MAX_PAUSE_READ_LEAD_S = 0.5

_RESERVE = text(
    "SELECT granted, delay_s, reason FROM telegram_reserve_slot("
    ":lane, :chat, :lane_interval, :chat_interval, :bulk, :horizon)"
)
_PAUSE = text(
    """
    INSERT INTO telegram_rate_limits AS l (scope, next_at, paused_until)
    SELECT scope, clock_timestamp() + make_interval(secs => :seconds),
           clock_timestamp() + make_interval(secs => :seconds)
    FROM unnest(CAST(:scopes AS varchar[])) AS scope ORDER BY scope
    ON CONFLICT (scope) DO UPDATE SET
        paused_until = greatest(l.paused_until, EXCLUDED.paused_until),
        next_at = greatest(l.next_at, EXCLUDED.next_at)
    """
)
_PAUSED_FOR = text(
    """
    SELECT coalesce(max(extract(epoch FROM paused_until - clock_timestamp())), 0)::float8
    FROM telegram_rate_limits WHERE scope = ANY(CAST(:scopes AS varchar[]))
    """
)
_RELEASE_CHAT = text(
    "UPDATE telegram_rate_limits SET next_at = clock_timestamp() "
    "WHERE scope = :chat AND next_at > clock_timestamp()"
)
_SWEEP = text(
    """
    DELETE FROM telegram_rate_limits WHERE scope IN (
        SELECT scope FROM telegram_rate_limits
        WHERE scope LIKE :pattern
          AND next_at < clock_timestamp() - interval '10 minutes'
          AND coalesce(paused_until, '-infinity') < clock_timestamp() - interval '10 minutes'
        LIMIT 10000 FOR UPDATE SKIP LOCKED
    )
    """
)


class WaitReason(StrEnum):
    CHAT = "chat"  # the chat's interval or its 429 pause
    HORIZON = "horizon"  # bulk may not reserve that far ahead (or the bot is paused)


@dataclass(frozen=True)
class Grant:
    """A reserved slot: call Telegram in ``delay_s`` seconds."""

    delay_s: float


@dataclass(frozen=True)
class Slot:
    """A reserved moment to call Telegram (a `time.monotonic()` value) and how far ahead of its
    reservation it was booked."""

    at: float
    booked_ahead_s: float


@dataclass(frozen=True)
class Wait:
    """No slot now: ask again in ``delay_s`` seconds."""

    delay_s: float
    reason: WaitReason


def chat_interval(chat_id: int, settings: SenderSettings) -> float:
    """Private chats (positive ids) one message per interval; groups and channels their own."""
    return settings.private_chat_interval_s if chat_id > 0 else settings.group_interval_s


class RateGate:
    """Reserves send slots in PostgreSQL; one per process, shared by every send of that process.

    Within a process, bulk reservations queue behind one lock, so a single bulk waiter polls the
    database while the others wait locally; critical sends never take that lock.
    """

    def __init__(self, engine: AsyncEngine, settings: SenderSettings, bot_id: int) -> None:
        self._engine = engine
        self._settings = settings
        self._prefix = f"{bot_id}:"
        self._bulk_lock = asyncio.Lock()
        self._grants = 0
        # 429 pauses this process learnt of, by scope (monotonic deadline): checked without a query
        # right before a call, so a sibling's fresh 429 is honoured even before it reaches the table.
        self._local_pauses: dict[str, float] = {}
        self._pause_reads: deque[float] = deque(maxlen=32)  # recent latencies of `paused_for`

    def scope(self, lane: Lane | int) -> str:
        """``{bot}:global``, ``{bot}:admin`` or ``{bot}:chat:{id}``."""
        return f"{self._prefix}{lane}" if isinstance(lane, str) else f"{self._prefix}chat:{lane}"

    async def wait_for_slot(
        self,
        chat_id: int | None,
        priority: Priority,
        *,
        lane: Lane = "global",
        deadline: float,
        lead_s: float = 0.0,
    ) -> Slot:
        """Return `lead_s` before this send's slot, with the slot (see `too_late` and `until`): the
        caller does its database work (its intent, the pause check) in the lead, so those round
        trips are not counted as lateness.

        Raises TelegramRateLimited if the slot would come after `deadline` (a monotonic value: the
        longest the caller may keep waiting).
        """
        started = time.monotonic()
        waits: list[str] = []
        grant = await self._reserve(chat_id, priority, lane, deadline, waits)
        reserved = time.monotonic()
        slot_at = reserved + grant.delay_s
        await asyncio.sleep(max(0.0, grant.delay_s - lead_s))
        woke = time.monotonic() + min(lead_s, grant.delay_s)
        metrics.SLOT_WAIT_SECONDS.labels(priority.value).observe(woke - started)
        if priority is Priority.CRITICAL and woke - started > _SLOW_CRITICAL_S:
            logger.warning(
                "critical send waited %.2fs for its slot: %.2fs reserving (%s), slot %.2fs ahead, "
                "woke %.0f ms late",
                woke - started,
                reserved - started,
                ", ".join(waits) or "granted at once",
                grant.delay_s,
                (woke - slot_at) * 1000,
                extra={"chat_id": chat_id},
            )
        return Slot(slot_at, grant.delay_s)

    @staticmethod
    async def until(slot: Slot) -> None:
        """Sleep out what is left of a lead taken by `wait_for_slot`."""
        if (early := slot.at - time.monotonic()) > 0:
            await asyncio.sleep(early)

    def too_late(self, slot: Slot) -> bool:
        """True if a call now would leave more than `late_slot_s` after its slot (a stalled loop).

        Checked right before the call: sending that late could bunch up with the next slots, so the
        slot is given up and a new one taken.
        """
        if time.monotonic() - slot.at <= self._settings.late_slot_s:
            return False
        metrics.LATE_SLOTS.inc()
        return True

    def pause_read_lead_s(self) -> float:
        """How long before a slot to start `paused_for_slot`: the slowest recent read, bounded."""
        return min(_MAX_PAUSE_READ_LEAD_S, max(self._pause_reads, default=0.0))

    async def paused_for_slot(self, slot: Slot, chat_id: int | None, lane: Lane = "global") -> float:
        """Seconds left of a 429 pause covering a call at `slot`.

        A pause pushes its scopes' next free time past its end, so a reservation made after it was
        recorded is booked after it: a slot booked for about now needs no read. Only a slot booked
        ahead, which a pause may have overtaken meanwhile, reads the table (in the slot's lead).
        Reading it after every slot put a round trip between slot and call: on a loaded database
        most slots came out late and were given up, and a busy process sent a message a second.
        """
        if slot.booked_ahead_s <= self._settings.late_slot_s:
            return self.local_pause_left(chat_id, lane)
        started = time.monotonic()
        paused = await self.paused_for(chat_id, lane)
        self._pause_reads.append(time.monotonic() - started)
        return paused

    async def _reserve(
        self, chat_id: int | None, priority: Priority, lane: Lane, deadline: float, waits: list[str]
    ) -> Grant:
        while True:
            if priority is Priority.BULK and lane == "global":
                async with self._bulk_lock:
                    outcome = await self._reserve_within_horizon(chat_id, priority, deadline)
            else:
                outcome = await self.try_reserve(chat_id, priority, lane=lane)
            if isinstance(outcome, Grant):
                return outcome
            # The chat is busy (or paused): wait outside the bulk lock so other chats go on.
            waits.append(f"{outcome.reason} {outcome.delay_s:.2f}s")
            _check_deadline(outcome.delay_s, deadline, f"the {outcome.reason} limit")
            await asyncio.sleep(outcome.delay_s)

    async def _reserve_within_horizon(
        self, chat_id: int | None, priority: Priority, deadline: float
    ) -> Grant | Wait:
        while True:
            outcome = await self.try_reserve(chat_id, priority)
            if isinstance(outcome, Grant) or outcome.reason is not WaitReason.HORIZON:
                return outcome
            _check_deadline(outcome.delay_s, deadline, "the global limit")
            await asyncio.sleep(outcome.delay_s)

    async def try_reserve(
        self, chat_id: int | None, priority: Priority, *, lane: Lane = "global"
    ) -> Grant | Wait:
        """One reservation attempt (one statement); member calls have no chat scope and no priority."""
        per_chat = chat_id is not None and lane == "global"
        params = {
            "lane": self.scope(lane),
            "chat": self.scope(chat_id) if per_chat and chat_id is not None else None,
            "lane_interval": self._lane_interval(lane),
            "chat_interval": chat_interval(chat_id, self._settings) if per_chat and chat_id else 0.0,
            "bulk": priority is Priority.BULK and lane == "global",
            "horizon": self._settings.bulk_horizon_s,
        }
        async with self._engine.connect() as connection:
            granted, delay_s, reason = (await connection.execute(_RESERVE, params)).one()
        if not granted:
            return Wait(float(delay_s), WaitReason(reason))
        await self._maybe_sweep()
        return Grant(float(delay_s))

    def _lane_interval(self, lane: Lane) -> float:
        return self._settings.global_interval_s if lane == "global" else self._settings.admin_interval_s

    def pause_scopes(self, chat_id: int | None, lane: Lane = "global") -> list[str]:
        """The scopes whose 429 pause stops this send: the bot's, and its chat's or the member lane's."""
        scopes = [self.scope("global")]  # a global flood stops member calls too
        if lane == "admin":
            scopes.append(self.scope("admin"))
        elif chat_id is not None:
            scopes.append(self.scope(chat_id))
        return scopes

    def local_pause_left(self, chat_id: int | None, lane: Lane = "global") -> float:
        """Seconds left of a 429 pause this process knows of; no database round trip."""
        now = time.monotonic()
        return max([0.0] + [self._local_pauses.get(s, now) - now for s in self.pause_scopes(chat_id, lane)])

    async def paused_for(self, chat_id: int | None, lane: Lane = "global") -> float:
        """Seconds left of an announced 429 wait covering this send (the bot's or the chat's); 0 if none."""
        local = self.local_pause_left(chat_id, lane)
        if local > 0:
            return local
        async with self._engine.connect() as connection:
            remaining = await connection.scalar(_PAUSED_FOR, {"scopes": self.pause_scopes(chat_id, lane)})
        return max(0.0, float(remaining or 0))

    async def release_chat(self, chat_id: int) -> None:
        """Free the chat of a slot given up before any call (a stall, a 429 elsewhere).

        The chat got nothing, so its 1 s interval need not run: without this the retry waits it
        out (a critical message a second late). Resetting to now is safe: while this send held
        the chat's future, every other send to the chat was told to wait, so no later one hangs
        on it; a 429 pause lives in ``paused_until`` and stays.
        """
        async with self._engine.connect() as connection:
            await connection.execute(_RELEASE_CHAT, {"chat": self.scope(chat_id)})

    async def pause(self, scopes: Sequence[Lane | int], retry_after_s: float) -> None:
        """Honour a 429: nothing in these scopes is sent for `retry_after_s` seconds, in any process."""
        names = sorted({self.scope(s) for s in scopes})
        now = time.monotonic()
        self._local_pauses = {s: t for s, t in self._local_pauses.items() if t > now}
        for name in names:
            self._local_pauses[name] = max(self._local_pauses.get(name, 0.0), now + retry_after_s)
        async with self._engine.connect() as connection:
            await connection.execute(_PAUSE, {"scopes": names, "seconds": retry_after_s})

    async def _maybe_sweep(self) -> None:
        """Delete per-chat rows idle for a while, so a large audience does not grow the table forever."""
        self._grants += 1
        if self._grants % _SWEEP_EVERY:
            return
        async with self._engine.connect() as connection:
            result = await connection.execute(_SWEEP, {"pattern": f"{self._prefix}chat:%"})
        logger.debug("swept %s idle chat limit rows", result.rowcount)


def _check_deadline(wait_s: float, deadline: float, what: str) -> None:
    if time.monotonic() + wait_s > deadline:
        raise TelegramRateLimited(f"waiting {wait_s:.1f}s for {what} would exceed this call's budget", wait_s)
