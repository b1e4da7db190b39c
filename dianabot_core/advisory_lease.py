"""A PostgreSQL advisory lock held as a lease: the holder acts only while it knows the lock is its own.

The lock is session-level, on a connection of its own (never pooled), whose server session runs
with ``idle_session_timeout``. A holder that hangs (SIGSTOP, a stuck event loop, a cut network)
stops pinging; the server ends its idle session after ``session_timeout_s`` and the lock goes with
it, so a standby takes over. A killed process's socket closes, which releases the lock at once.

``keep`` pings every fifth of the timeout. The lease is counted from when the last successful ping
was *sent*: the server cannot end the session before ``sent + session_timeout_s``, so ``check``
passes only while less than four fifths of that has passed. A holder that was paused longer (and
may have lost the lock meanwhile) fails ``check`` before it acts again, even before it could learn
from the server that its session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy import URL, NullPool, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

logger = logging.getLogger("dianabot.lease")


class LeaseLost(Exception):
    """The lock may be someone else's now: stop acting on it."""


class AdvisoryLease:
    """``try_acquire`` / ``keep`` / ``check`` / ``release`` of one advisory lock key."""

    def __init__(self, url: URL | str, key: int, *, session_timeout_s: float, name: str) -> None:
        if session_timeout_s < 1:
            raise ValueError("session_timeout_s must be at least 1 s")
        self.key = key
        self.session_timeout_s = session_timeout_s
        self.ping_interval_s = session_timeout_s / 5
        self._valid_for_s = session_timeout_s * 4 / 5
        self._engine: AsyncEngine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "timeout": self.ping_interval_s,
                "server_settings": {
                    "application_name": name,
                    "idle_session_timeout": str(int(session_timeout_s * 1000)),
                    "statement_timeout": str(int(self.ping_interval_s * 1000)),
                },
            },
        )
        self._connection: AsyncConnection | None = None
        self._renewed_at: float | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another session holds it. Raises on database errors."""
        await self._drop()
        connection = await self._engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            sent = time.monotonic()
            taken = await asyncio.wait_for(
                connection.scalar(select(func.pg_try_advisory_lock(self.key))), self.ping_interval_s
            )
        except BaseException:
            await _close(connection)
            raise
        if not taken:
            await _close(connection)
            return False
        self._connection, self._renewed_at = connection, sent
        return True

    def check(self) -> None:
        """Raise LeaseLost unless the lock is surely still held (a recent enough ping succeeded)."""
        if self._renewed_at is None or self._connection is None:
            raise LeaseLost(f"advisory lock {self.key} is not held")
        age = time.monotonic() - self._renewed_at
        if age >= self._valid_for_s:
            raise LeaseLost(
                f"no successful ping of the lock connection for {age:.1f}s: the server may have "
                f"ended the session after its {self.session_timeout_s:g}s idle limit"
            )

    async def keep(self) -> None:
        """Ping until the lock connection fails; then the lease is dropped and ``check`` fails."""
        while self._connection is not None:
            await asyncio.sleep(self.ping_interval_s)
            connection = self._connection
            if connection is None:
                return
            sent = time.monotonic()
            try:
                await asyncio.wait_for(connection.execute(text("SELECT 1")), self.ping_interval_s)
            except Exception as error:
                logger.warning("advisory lock %s: lock connection lost: %s", self.key, type(error).__name__)
                await self._drop()
                return
            self._renewed_at = sent

    async def release(self) -> None:
        """Give the lock up at once (a clean stop hands over without waiting for the timeout)."""
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):  # ending the session releases it as well
                await asyncio.wait_for(
                    connection.execute(select(func.pg_advisory_unlock(self.key))), self.ping_interval_s
                )
        await self._drop()

    async def close(self) -> None:
        await self.release()
        await self._engine.dispose()

    async def _drop(self) -> None:
        connection, self._connection, self._renewed_at = self._connection, None, None
        if connection is not None:
            await _close(connection)


async def _close(connection: AsyncConnection) -> None:
    # Never let a connection that may hold the lock live on: invalidate closes its session.
    with contextlib.suppress(Exception):
        await connection.invalidate()
    with contextlib.suppress(Exception):
        await connection.close()
