"""vip invite links, channel join requests and daily-gift streaks

Revision ID: 5d1c3a7e9b20
Revises: 131b1c0c7642
Create Date: 2026-11-29 09:00:00.000000
"""

from collections.abc import Sequence

revision: str = "5d1c3a7e9b20"
down_revision: str | None = "131b1c0c7642"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
