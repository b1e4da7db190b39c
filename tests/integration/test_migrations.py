"""Migrations build the schema the models describe, and the database enforces the data rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dianabot_core.models import (
    Balance,
    Base,
    Subscription,
    SubscriptionPlan,
    SubscriptionStatus,
    Transaction,
    TransactionType,
    User,
)


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_and_models_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_diff)
    assert differences == []


@pytest.fixture
async def session(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session
        await session.rollback()


async def _user(session: AsyncSession, telegram_id: int) -> User:
    user = User(telegram_id=telegram_id, username=f"u{telegram_id}")
    session.add(user)
    await session.flush()
    return user


async def test_telegram_id_is_unique(session: AsyncSession) -> None:
    await _user(session, 1001)
    with pytest.raises(IntegrityError, match="uq_users_telegram_id"):
        await _user(session, 1001)


async def test_only_one_active_subscription_per_user(session: AsyncSession) -> None:
    user = await _user(session, 1002)
    now = datetime.now(UTC)
    session.add(
        Subscription(user_id=user.id, plan=SubscriptionPlan.MONTHLY, start_at=now, end_at=now + timedelta(30))
    )
    session.add(
        Subscription(
            user_id=user.id,
            plan=SubscriptionPlan.MONTHLY,
            status=SubscriptionStatus.EXPIRED,
            start_at=now - timedelta(60),
            end_at=now - timedelta(30),
        )
    )
    await session.flush()  # one active and one expired: fine
    session.add(
        Subscription(user_id=user.id, plan=SubscriptionPlan.YEARLY, start_at=now, end_at=now + timedelta(365))
    )
    with pytest.raises(IntegrityError, match="uq_subscriptions_one_active_per_user"):
        await session.flush()


async def test_lifetime_subscriptions_have_no_end(session: AsyncSession) -> None:
    user = await _user(session, 1003)
    now = datetime.now(UTC)
    session.add(Subscription(user_id=user.id, plan=SubscriptionPlan.LIFETIME, start_at=now, end_at=now))
    with pytest.raises(IntegrityError, match="end_at_unless_lifetime"):
        await session.flush()


async def test_balance_never_goes_negative(session: AsyncSession) -> None:
    user = await _user(session, 1004)
    session.add(Balance(user_id=user.id, amount=5))
    await session.flush()
    with pytest.raises(IntegrityError, match="amount_non_negative"):
        await session.execute(
            text("UPDATE balances SET amount = amount - 6 WHERE user_id = :id"), {"id": user.id}
        )


async def test_transaction_idempotency_key_is_unique(session: AsyncSession) -> None:
    user = await _user(session, 1005)
    for _ in range(2):
        session.add(
            Transaction(
                user_id=user.id,
                amount=10,
                type=TransactionType.EARN,
                source="mission",
                idempotency_key="mission:daily_login:1005:2026-11-29",
            )
        )
    with pytest.raises(IntegrityError, match="uq_transactions_idempotency_key"):
        await session.flush()
