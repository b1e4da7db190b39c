"""The async engine and session factory, built once per process from settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import InstrumentedAttribute

from dianabot_core.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.url.get_secret_value(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        # No ping before each checkout: on asyncpg it is three round trips (BEGIN, a query,
        # ROLLBACK) per transaction, a third of a batch's. A connection the server dropped fails
        # its first statement instead; SQLAlchemy then discards every pooled connection opened
        # before, and the pipeline handles that batch again on new ones
        # (tests/integration/test_database_reconnect.py).
        pool_pre_ping=False,
        # Hide bound parameters from SQLAlchemy's error messages: they may carry user data.
        hide_parameters=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.statement_timeout_ms),
                "application_name": "dianabot-jobs",
            }
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def delete_batch(
    session: AsyncSession, *key: InstrumentedAttribute[Any], where: ColumnElement[bool], batch_size: int
) -> int:
    """Delete up to ``batch_size`` rows matching ``where`` (by their primary ``key`` columns),
    skipping rows another transaction holds; return how many went.

    The shape of every retention purge: one bounded statement per short transaction, called
    until it deletes fewer than ``batch_size``, so no purge takes long locks or a table-wide delete.
    """
    oldest = select(*key).where(where).limit(batch_size).with_for_update(skip_locked=True)
    target = key[0] if len(key) == 1 else tuple_(*key)
    result = await session.execute(delete(key[0].class_).where(target.in_(oldest)).returning(key[0]))
    return len(result.all())
