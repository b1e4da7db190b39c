"""Leader election: a PostgreSQL session-level advisory lock held on a dedicated connection.

Only the replica holding the lock emits ticks. The lock lives exactly as long as the holder's
server session: a killed process's socket closes and the server drops the lock at once, so a
standby (retrying every ``standby_retry_s``) takes over within about a second or two. A leader
that hangs or is cut off stops pinging; the server ends its idle session after
``idle_session_timeout`` and the lock goes with it. A leader that notices its lock connection is
gone stops emitting. Two leaders can still briefly overlap (a cut-off leader that has not noticed
yet), which is why emitting is also fenced by a compare-and-set on the job's last slot and by the
derived event ids (``schedulers/state.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import NullPool, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

logger = logging.getLogger("dianabot.scheduler")

_PING_TIMEOUT_S = 5.0


class LeadershipLost(Exception):
    """The lock connection is gone: another replica may be leading now."""


class AdvisoryLock:
    """``try_acquire`` / ``check`` / ``release`` on one connection of its own (never pooled)."""

    def __init__(self, database_url: str, key: int, *, session_timeout_s: float) -> None:
        self.key = key
        self._engine: AsyncEngine = create_async_engine(
            database_url,
            poolclass=NullPool,
            connect_args={
                "timeout": _PING_TIMEOUT_S,
                "server_settings": {
                    "application_name": "dianabot-scheduler-lock",
                    "idle_session_timeout": str(int(session_timeout_s * 1000)),
                    "statement_timeout": str(int(_PING_TIMEOUT_S * 1000)),
                },
            },
        )
        self._connection: AsyncConnection | None = None
        self.held = False

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another session holds it. Raises on database errors."""
        try:
            connection = await self._connect()
            taken = await asyncio.wait_for(
                connection.scalar(select(func.pg_try_advisory_lock(self.key))), _PING_TIMEOUT_S
            )
        except BaseException:
            await self._drop()
            raise
        self.held = bool(taken)
        return self.held

    async def check(self) -> None:
        """Raise LeadershipLost unless the lock's connection still answers."""
        if not self.held or self._connection is None:
            raise LeadershipLost("the scheduler lock is not held")
        try:
            await asyncio.wait_for(self._connection.execute(text("SELECT 1")), _PING_TIMEOUT_S)
        except Exception as error:
            await self._drop()
            raise LeadershipLost(f"lock connection lost: {type(error).__name__}") from error

    async def release(self) -> None:
        """Give the lock up at once (a clean shutdown hands over without waiting)."""
        if self.held and self._connection is not None:
            try:
                await asyncio.wait_for(
                    self._connection.execute(select(func.pg_advisory_unlock(self.key))), _PING_TIMEOUT_S
                )
            except Exception:
                # Closing the session releases it as well.
                await self._drop()
        self.held = False

    async def close(self) -> None:
        await self.release()
        await self._drop()
        await self._engine.dispose()

    async def _connect(self) -> AsyncConnection:
        if self._connection is None or self._connection.closed:
            connection = await self._engine.connect()
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        return self._connection

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self.held = False
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()
