"""Economy invariants: every balance equals the sum of its user's transactions and is never negative.

The check only reads: a drift is evidence of a bug (or a manual edit) and is reported for a human to
investigate, never "fixed" by rewriting a balance.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# One aggregate pass over both tables. A FULL JOIN also catches transactions of a user without a
# balance row (its balance counts as 0). count(*) OVER () gives the total while LIMIT bounds the rows.
_DRIFTS_SQL = text(
    """
    WITH sums AS (
        SELECT user_id, sum(amount) AS total FROM transactions GROUP BY user_id
    )
    SELECT coalesce(b.user_id, s.user_id) AS user_id,
           coalesce(b.amount, 0) AS balance,
           coalesce(s.total, 0) AS transactions_sum,
           count(*) OVER () AS drifted
    FROM balances b
    FULL JOIN sums s ON s.user_id = b.user_id
    WHERE coalesce(b.amount, 0) <> coalesce(s.total, 0) OR b.amount < 0
    ORDER BY 1
    LIMIT :limit
    """
)


@dataclass(frozen=True)
class Drift:
    user_id: int
    balance: int
    transactions_sum: int

    @property
    def difference(self) -> int:
        return self.balance - self.transactions_sum


@dataclass(frozen=True)
class DriftReport:
    """All drifted users' count, and the first ``limit`` of them by user id."""

    total: int
    drifts: tuple[Drift, ...]


async def find_drifts(session: AsyncSession, *, limit: int) -> DriftReport:
    """Balances that differ from the sum of their transactions, or are negative (one query)."""
    rows = (await session.execute(_DRIFTS_SQL, {"limit": limit})).all()
    drifts = tuple(Drift(int(user_id), int(balance), int(total)) for user_id, balance, total, _ in rows)
    return DriftReport(int(rows[0][3]) if rows else 0, drifts)
