"""broadcast_audience: a listed broadcast's recipients in PostgreSQL, not in the request's record

Revision ID: 9c4e7a1b3d58
Revises: 6b2d4e8f1a93
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9c4e7a1b3d58"
down_revision: str | None = "6b2d4e8f1a93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broadcast_audience",
        sa.Column("broadcast_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("broadcast_id", "user_id", name=op.f("pk_broadcast_audience")),
    )


def downgrade() -> None:
    op.drop_table("broadcast_audience")
