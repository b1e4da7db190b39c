"""outbox: partial index of parked rows (the monitoring heartbeat looks for them every minute)

Revision ID: 6b2d4e8f1a93
Revises: 3f6a9c2d8e51
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "6b2d4e8f1a93"
down_revision: str | None = "3f6a9c2d8e51"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_parked", "outbox", ["parked_at"], postgresql_where=sa.text("parked_at IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_parked", table_name="outbox")
