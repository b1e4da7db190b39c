"""outbox: NOTIFY on insert, so an idle relay sleeps until a row arrives instead of polling

Revision ID: b7e3f1a2c9d4
Revises: 9c4e7a1b3d58
Create Date: 2026-12-02 12:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b7e3f1a2c9d4"
down_revision: str | None = "9c4e7a1b3d58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Per statement, not per row: a transaction that writes many rows wakes the relay once (and
    # PostgreSQL folds identical notifications of one transaction into one, sent at commit).
    op.execute(
        """
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('dianabot_outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION outbox_notify()")
