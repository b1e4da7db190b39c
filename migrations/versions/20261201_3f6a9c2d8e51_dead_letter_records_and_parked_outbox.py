"""dead letter records (one per handler and source record) and parked outbox rows

Revision ID: 3f6a9c2d8e51
Revises: 8e4f2b6a1c37
Create Date: 2026-12-01 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3f6a9c2d8e51"
down_revision: str | None = "8e4f2b6a1c37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("outbox", sa.Column("parked_reason", sa.Text(), nullable=True))
    op.create_table(
        "dead_letter_records",
        sa.Column("handler", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_error", sa.Text(), nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "handler", "topic", "partition", "offset", name=op.f("pk_dead_letter_records")
        ),
    )
    op.create_index(
        "ix_dead_letter_records_stored",
        "dead_letter_records",
        ["failed_at"],
        postgresql_where=sa.text("publish_error IS NOT NULL"),
    )
    op.create_index("ix_dead_letter_records_failed_at", "dead_letter_records", ["failed_at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letter_records_failed_at", table_name="dead_letter_records")
    op.drop_index("ix_dead_letter_records_stored", table_name="dead_letter_records")
    op.drop_table("dead_letter_records")
    op.drop_column("outbox", "parked_reason")
    op.drop_column("outbox", "parked_at")
