"""Records stranded in PostgreSQL because Kafka would not take them, as the heartbeat's findings.

* Parked outbox rows (``outbox.parked_at``, see ``dianabot_core/outbox.py``): events that were committed but
  can never be published (too large). Critical: nothing downstream will ever see them.
* Stored dead letters (``dead_letter_records.publish_error``): dead letters the dead-letter topic
  would not take, kept with their bytes instead. A warning, like any new dead letter.

One finding per topic (handler); it stays open while such rows exist, until an operator deals with
them (requeues or deletes them), and then clears.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from dianabot_core.findings import KEY_PREFIX, CheckResult, Finding
from dianabot_core.models import DeadLetterRecord, OutboxEvent


def parked_key(topic: str) -> str:
    return f"{KEY_PREFIX}outbox_parked:{topic}"


def stored_dead_letter_key(handler: str) -> str:
    return f"{KEY_PREFIX}dead_letters_stored:{handler}"


async def parked_outbox_check(session: AsyncSession, prefix: str = "") -> CheckResult:
    """A critical finding per topic (starting with ``prefix``) with parked outbox rows."""
    rows = await session.execute(
        _stored_by(OutboxEvent.topic, OutboxEvent.parked_at, OutboxEvent.parked_reason).where(
            OutboxEvent.parked_at.is_not(None), OutboxEvent.topic.startswith(prefix, autoescape=True)
        )
    )
    findings = [
        Finding(
            parked_key(row.name),
            "critical",
            f"Parked outbox rows for {row.name}: {row.rows:,} (events Kafka can never take, so never "
            f"published). Latest ({row.latest:%Y-%m-%d %H:%M} UTC): {row.reason[:300]}",
            _stored_details("topic", row),
        )
        for row in rows
    ]
    return CheckResult(findings, prefixes=(parked_key(prefix),))


async def stored_dead_letter_check(session: AsyncSession, prefix: str = "") -> CheckResult:
    """A finding per handler (starting with ``prefix``) with dead letters kept in PostgreSQL."""
    rows = await session.execute(
        _stored_by(
            DeadLetterRecord.handler, DeadLetterRecord.failed_at, DeadLetterRecord.publish_error
        ).where(
            DeadLetterRecord.publish_error.is_not(None),
            DeadLetterRecord.handler.startswith(prefix, autoescape=True),
        )
    )
    findings = [
        Finding(
            stored_dead_letter_key(row.name),
            "warning",
            f"Dead letters of {row.name} kept in PostgreSQL: {row.rows:,} (Kafka would not take them; see "
            f"dead_letter_records). Latest ({row.latest:%Y-%m-%d %H:%M} UTC): {row.reason[:300]}",
            _stored_details("handler", row),
        )
        for row in rows
    ]
    return CheckResult(findings, prefixes=(stored_dead_letter_key(prefix),))


def _stored_by(
    name: InstrumentedAttribute[str], at: InstrumentedAttribute[Any], reason: InstrumentedAttribute[Any]
) -> Select[tuple[str, int, datetime, str]]:
    """Per ``name``: how many rows, the latest ``at``, and that row's ``reason``."""
    latest_reason = func.array_agg(aggregate_order_by(reason, at.desc()))[1]
    return (
        select(
            name.label("name"),
            func.count().label("rows"),
            func.max(at).label("latest"),
            latest_reason.label("reason"),
        )
        .group_by(name)
        .order_by(name)
    )


def _stored_details(what: str, row: Row[tuple[str, int, datetime, str]]) -> dict[str, Any]:
    return {
        what: row.name,
        "rows": row.rows,
        "latest_at": row.latest.isoformat(),
        "latest_reason": row.reason[:300],
    }
