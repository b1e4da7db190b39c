"""Time, injected: the pipeline and the scheduler never read the wall clock directly."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, tz-aware UTC."""
        ...

    def monotonic(self) -> float: ...

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until `when` (UTC); returns at once when it has passed."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: datetime) -> None:
        # Re-reads the clock after each sleep so an early wake-up never fires early.
        while (remaining := (when - self.now()).total_seconds()) > 0:
            await asyncio.sleep(remaining)
