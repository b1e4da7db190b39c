"""The slot rules, as PostgreSQL runs them (``telegram_reserve_slot``), at times the test chooses."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dianabot_contracts.events import Priority
from dianabot_core.telegram.limits import Grant, RateGate, Wait, WaitReason
from dianabot_core.telegram.settings import SenderSettings

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GLOBAL = 0.04  # 25/s
CHAT = 1.2
HORIZON = 0.25


class Bucket:
    """Fresh scopes for one test, and a call of the SQL function at a chosen moment."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        prefix = uuid.uuid4().hex[:8]
        self.lane, self.chat = f"{prefix}:global", f"{prefix}:chat:1"

    async def reserve(
        self, seconds: float = 0.0, *, bulk: bool = True, chat: bool = True
    ) -> tuple[bool, float, str | None]:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT * FROM telegram_reserve_slot(:l, :c, :li, :ci, :b, :h, :now)"),
                    {
                        "l": self.lane,
                        "c": self.chat if chat else None,
                        "li": GLOBAL,
                        "ci": CHAT,
                        "b": bulk,
                        "h": HORIZON,
                        "now": NOW + timedelta(seconds=seconds),
                    },
                )
            ).one()
            await connection.commit()
        return bool(row[0]), round(float(row[1]), 6), row[2]

    async def set(self, scope: str, next_in: float | None = None, paused_for: float | None = None) -> None:
        def at(seconds: float | None) -> datetime | None:
            return None if seconds is None else NOW + timedelta(seconds=seconds)

        async with self.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO telegram_rate_limits (scope, next_at, paused_until) VALUES (:s, :n, :p) "
                    "ON CONFLICT (scope) DO UPDATE SET next_at = :n, paused_until = :p"
                ),
                {"s": scope, "n": at(next_in), "p": at(paused_for)},
            )


@pytest.fixture
def bucket(engine: AsyncEngine) -> Bucket:
    return Bucket(engine)


async def test_an_idle_bot_sends_at_once(bucket: Bucket) -> None:
    assert await bucket.reserve() == (True, 0.0, None)


async def test_consecutive_sends_are_spaced_by_the_global_interval(bucket: Bucket) -> None:
    delays = [(await bucket.reserve(bulk=False, chat=False))[1] for _ in range(30)]
    assert delays == [round(i * GLOBAL, 6) for i in range(30)]
    # 30 sends fill 1.16 s: at most 25 of them fall in any one-second window.
    assert sum(1 for d in delays if d < 1.0) == 25
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(delays)}
    assert gaps == {GLOBAL}


async def test_bulk_may_not_reserve_beyond_the_horizon_but_critical_may(bucket: Bucket) -> None:
    await bucket.set(bucket.lane, next_in=1.0)
    assert await bucket.reserve(bulk=True) == (False, 0.75, "horizon")
    assert await bucket.reserve(bulk=False) == (True, 1.0, None)


async def test_bulk_within_the_horizon_gets_the_slot(bucket: Bucket) -> None:
    await bucket.set(bucket.lane, next_in=0.2)
    assert await bucket.reserve(bulk=True) == (True, 0.2, None)


async def test_a_busy_chat_takes_no_bot_slot(bucket: Bucket) -> None:
    await bucket.set(bucket.chat, next_in=0.7)
    assert await bucket.reserve(bulk=False) == (False, 0.7, "chat")
    # The bot's next slot is still free for another chat.
    bucket.chat = bucket.chat + "0"
    assert await bucket.reserve(bulk=False) == (True, 0.0, None)


async def test_the_chat_interval_counts_from_the_granted_slot(bucket: Bucket) -> None:
    await bucket.set(bucket.lane, next_in=0.1)
    assert await bucket.reserve(bulk=False) == (True, 0.1, None)
    assert await bucket.reserve(0.1 + CHAT - 0.01, bulk=False) == (False, 0.01, "chat")
    assert (await bucket.reserve(0.1 + CHAT, bulk=False))[0] is True


async def test_a_paused_bot_gives_critical_a_slot_after_the_pause_and_bulk_nothing(bucket: Bucket) -> None:
    await bucket.set(bucket.lane, paused_for=5.0)
    assert await bucket.reserve(bulk=True) == (False, 4.75, "horizon")
    assert await bucket.reserve(bulk=False) == (True, 5.0, None)


async def test_a_paused_chat_waits_for_its_pause(bucket: Bucket) -> None:
    await bucket.set(bucket.chat, paused_for=3.0)
    assert await bucket.reserve(bulk=False) == (False, 3.0, "chat")


async def test_idle_time_does_not_build_up_a_burst(bucket: Bucket) -> None:
    await bucket.set(bucket.lane, next_in=-10.0)
    assert await bucket.reserve(chat=False) == (True, 0.0, None)
    assert await bucket.reserve(chat=False) == (True, GLOBAL, None)


async def test_a_slot_given_up_before_the_call_frees_its_chat_at_once(engine: AsyncEngine) -> None:
    gate = RateGate(autocommit(engine), SenderSettings(), random.randrange(10**9, 10**10))
    chat = random.randrange(10**9, 10**10)
    assert isinstance(await gate.try_reserve(chat, Priority.CRITICAL), Grant)
    busy = await gate.try_reserve(chat, Priority.CRITICAL)
    assert isinstance(busy, Wait)
    assert busy.reason is WaitReason.CHAT
    await gate.release_chat(chat)  # nothing was called: the chat got nothing
    assert isinstance(await gate.try_reserve(chat, Priority.CRITICAL), Grant)


async def test_releasing_a_chat_keeps_its_429_pause(engine: AsyncEngine) -> None:
    gate = RateGate(autocommit(engine), SenderSettings(), random.randrange(10**9, 10**10))
    chat = random.randrange(10**9, 10**10)
    await gate.pause([chat], 30.0)
    await gate.release_chat(chat)
    paused = await gate.try_reserve(chat, Priority.CRITICAL)
    assert isinstance(paused, Wait)
    assert (paused.reason, paused.delay_s > 25) == (WaitReason.CHAT, True)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """As the sender's own engine is: every reservation is its own statement, committed."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")
