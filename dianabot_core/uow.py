"""The unit of work: one database transaction that a handler's effects commit in.

Nothing else commits. The pipeline opens a unit of work per event, writes the ledger row
in it, hands it to the handler, and commits it after the handler returns.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class UnitOfWork:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._session_factory = session_factory
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("UnitOfWork used outside 'async with'")
        return self._session

    async def __aenter__(self) -> Self:
        self._session = self._session_factory()
        await self._session.begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self.session, None
        try:
            # Leaving without commit() discards everything: an error never half-applies.
            await session.rollback()
        finally:
            await session.close()

    async def commit(self) -> None:
        await self.session.commit()
