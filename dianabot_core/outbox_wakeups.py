"""Wakes the outbox relay when rows are written: PostgreSQL ``LISTEN`` on the outbox's channel.

The ``outbox`` table notifies ``dianabot_outbox`` after each insert statement (migration
``b7e3f1a2c9d4``); notifications are sent when the writing transaction commits. An idle relay
waits for one instead of polling every 200 ms, which was a tenth of an idle process's CPU.
Notifications are a wake-up, never the source of truth: the relay still reads the table, and
polls anyway every ``fallback_s`` (a notification sent while the listener reconnects is lost).
Without a listening connection (PostgreSQL down, no permission) the relay polls at its usual
interval until the listener is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import URL

logger = logging.getLogger("dianabot.outbox")

CHANNEL = "dianabot_outbox"
RECONNECT_EVERY_S = 5.0


class OutboxWakeups:
    """``wait(poll_s, fallback_s)``: until a row is written, or the timeout that applies."""

    def __init__(self, url: URL) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: asyncpg.Connection | None = None
        self._written = asyncio.Event()
        self._next_attempt = 0.0

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    def arm(self) -> None:
        """Call before reading the table: a row committed after this wakes the next ``wait``."""
        self._written.clear()

    async def wait(self, stop: asyncio.Event, poll_s: float, fallback_s: float) -> None:
        await self._listen()
        timeout = fallback_s if self.listening else poll_s
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._written.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _listen(self) -> None:
        if self.listening or time.monotonic() < self._next_attempt:
            return
        self._next_attempt = time.monotonic() + RECONNECT_EVERY_S
        await self.close()
        try:
            connection = await asyncpg.connect(
                self._dsn,
                timeout=RECONNECT_EVERY_S,
                server_settings={"application_name": "dianabot-outbox-wakeups"},
            )
            await connection.add_listener(CHANNEL, self._notified)
        except Exception as error:  # polling goes on; the next wait tries again
            logger.warning("outbox relay cannot listen for new rows (%s); polling", type(error).__name__)
            return
        self._connection = connection
        self._written.set()  # rows written while nobody listened: read the table once more

    def _notified(self, *_: object) -> None:
        self._written.set()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=5)
