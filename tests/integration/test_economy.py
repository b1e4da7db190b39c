"""The daily economy check on the real pipeline: drift reported as an alert and an event, never fixed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from consumers import economy
from dianabot_contracts.events import AlertRaised, EconomyDriftDetected
from dianabot_core.jobs import JobRunStatus
from dianabot_core.models import Balance, OutboxEvent, Transaction, TransactionType
from dianabot_core.settings import Settings
from tests.integration.pipeline_support import RawProducer
from tests.integration.test_gamification_support import (
    World,
    consuming,
    era,
    new_registry,
    outbox_caused_by,
    tick,
    unique_topic,
    wait_for_run,
)

CHECK = "scheduled_daily_economy_check"


@pytest.fixture
async def world(kafka: Settings, session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[World]:
    created = World(session_factory)
    yield created
    await created.cleanup()


async def _ledger(
    sessions: async_sessionmaker[AsyncSession], user_id: int, balance: int | None, amounts: list[int]
) -> None:
    async with sessions() as session, session.begin():
        if balance is not None:
            session.add(Balance(user_id=user_id, amount=balance, total_earned=max(balance, 0)))
        for n, amount in enumerate(amounts):
            kind = TransactionType.EARN if amount > 0 else TransactionType.SPEND
            session.add(
                Transaction(
                    user_id=user_id,
                    amount=amount,
                    type=kind,
                    source="mission",
                    idempotency_key=f"e:{user_id}:{n}",
                )
            )


async def _run_check(
    kafka: Settings, sessions: async_sessionmaker[AsyncSession]
) -> tuple[dict[str, int], list[OutboxEvent], list[OutboxEvent]]:
    topic = unique_topic("ticks")
    registry = new_registry()
    economy.register_jobs(registry, ticks=(topic,))
    check = tick(CHECK, era())
    async with consuming(kafka, [registry.group]), RawProducer(kafka) as producer:
        await producer.send_event(topic.name, check)
        run = await wait_for_run(sessions, check.event_id)
    assert run.status is JobRunStatus.FINISHED, run.error
    alerts = await outbox_caused_by(sessions, check.event_id, AlertRaised.event_type)
    drifts = await outbox_caused_by(sessions, check.event_id, EconomyDriftDetected.event_type)
    return run.counts, alerts, drifts


async def test_drift_is_reported_as_a_critical_alert_and_an_event_and_left_alone(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    too_high = await world.user(last_active_at=None)
    no_balance_row = await world.user(last_active_at=None)
    clean = await world.user(last_active_at=None)
    await _ledger(session_factory, too_high, 50, [30, 15, -5])  # balance 50, transactions 40
    await _ledger(session_factory, no_balance_row, None, [15])
    await _ledger(session_factory, clean, 20, [25, -5])

    counts, alerts, events = await _run_check(kafka, session_factory)

    assert counts["drifted_balances"] >= 2
    assert len(alerts) == 1
    alert = AlertRaised.model_validate(alerts[0].body["payload"])
    assert (alert.alert_key, alert.severity) == ("economy.drift", "critical")
    assert f"user {too_high}: 50 vs 40" in alert.summary
    assert {"user_id": too_high, "balance": 50, "transactions_sum": 40, "difference": 10} in alert.details[
        "drifts"
    ]
    assert len(events) == 1
    drifts = EconomyDriftDetected.model_validate(events[0].body["payload"]).drifts
    assert drifts[too_high] == {"balance": 50, "transactions_sum": 40}
    assert drifts[no_balance_row] == {"balance": 0, "transactions_sum": 15}
    assert clean not in drifts
    async with session_factory() as session:
        balance = await session.get(Balance, too_high)
        assert balance is not None
        assert balance.amount == 50  # reported, never "fixed"
        assert await session.get(Balance, no_balance_row) is None


async def test_a_clean_economy_emits_nothing(
    kafka: Settings, session_factory: async_sessionmaker[AsyncSession], world: World
) -> None:
    for balance, amounts in ((0, []), (12, [12]), (3, [10, -7])):
        await _ledger(session_factory, await world.user(last_active_at=None), balance, amounts)

    counts, alerts, events = await _run_check(kafka, session_factory)

    assert counts == {"drifted_balances": 0}
    assert alerts == []
    assert events == []
