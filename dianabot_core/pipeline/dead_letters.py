"""Dead letters, once: a record reaches the dead letters at most once per handler, whatever rewinds.

Each dead letter is claimed in PostgreSQL by (handler, origin topic, partition, offset), published,
and marked, all in one transaction: a rewound batch finds the mark and skips the record, and a
second pass at the same time waits on the claim's row lock. A crash between Kafka's ack and the
commit leaves no claim, so the record is dead-lettered again: the topic may then hold a second
copy with the same handler and origin headers, which the operator tools count once.

The dead-letter topic is never the reason a lane stops: a dead letter Kafka will not take (too
large, a topic problem) keeps its bytes in the claim row instead (`publish_error` set), is counted
and logged, and monitoring raises an alert; the lane moves on. Only PostgreSQL being unreachable
stops the lane (InfrastructureError: the batch is rewound and retried).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dianabot_core import metrics
from dianabot_core.db import delete_batch
from dianabot_core.models import DeadLetterRecord
from dianabot_core.pipeline.errors import InfrastructureError, describe
from dianabot_core.pipeline.records import Origin, Record, headers_text
from dianabot_core.pipeline.routing import FailureRouter

logger = logging.getLogger("dianabot.pipeline")

_CLAIM = text(
    """
    INSERT INTO dead_letter_records (handler, topic, partition, "offset", reason, attempts, failed_at)
    VALUES (:handler, :topic, :partition, :offset, :reason, :attempts, :failed_at)
    ON CONFLICT (handler, topic, partition, "offset") DO UPDATE SET handler = EXCLUDED.handler
    RETURNING published_at IS NOT NULL OR publish_error IS NOT NULL AS settled
    """
)
_MARK_PUBLISHED = text(
    """
    UPDATE dead_letter_records SET published_at = now()
    WHERE handler = :handler AND topic = :topic AND partition = :partition AND "offset" = :offset
    """
)
_STORE = text(
    """
    UPDATE dead_letter_records
    SET publish_error = :publish_error, key = :key, value = :value, headers = CAST(:headers AS jsonb)
    WHERE handler = :handler AND topic = :topic AND partition = :partition AND "offset" = :offset
    """
)


def _pg_text(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL; a hostile record may carry one anywhere.
    return value.replace("\x00", "\ufffd")


class DeadLetters:
    """Publishes a handler's dead letters to the dead-letter topic, each (handler, origin) once."""

    def __init__(self, session_factory: async_sessionmaker[AsyncSession], router: FailureRouter) -> None:
        self._session_factory = session_factory
        self._router = router

    async def send(
        self,
        record: Record,
        *,
        origin: Origin,
        handler: str,
        reason: str,
        attempts: int,
        failed_at: datetime,
        error: BaseException | None = None,
    ) -> bool:
        """Dead-letter `record` for `handler`; False when an earlier pass already did."""
        key = {
            "handler": handler,
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
        }
        claim = {**key, "reason": _pg_text(reason), "attempts": attempts, "failed_at": failed_at}
        try:
            # One transaction from claim to mark: the claim's row lock makes a second pass over the
            # same record (the old and new owner of a partition during a rebalance) wait, then
            # find it published. Only a crash between Kafka's ack and the commit leaves a copy.
            async with self._session_factory() as session, session.begin():
                if (await session.execute(_CLAIM, claim)).scalar():
                    return False
                publish_error = await self._publish(
                    record, origin, handler, reason, attempts, failed_at, error
                )
                if publish_error is None:
                    await session.execute(_MARK_PUBLISHED, key)
                else:
                    await session.execute(_STORE, _stored(record, key, publish_error))
        except Exception as db_error:
            raise InfrastructureError(f"database unreachable: {type(db_error).__name__}") from db_error
        if publish_error is not None:
            metrics.DEAD_LETTERS_STORED.labels(handler).inc()
            logger.error(
                "dead letter kept in PostgreSQL (dead_letter_records): Kafka would not take it: %s",
                publish_error,
                extra={"handler": handler, "topic": origin.topic, "offset": origin.offset},
            )
        return True

    async def _publish(
        self,
        record: Record,
        origin: Origin,
        handler: str,
        reason: str,
        attempts: int,
        failed_at: datetime,
        error: BaseException | None,
    ) -> str | None:
        """None once Kafka acknowledged the dead letter, else why it would not take it."""
        try:
            await self._router.to_dead_letters(
                record,
                origin=origin,
                handler=handler,
                reason=reason,
                attempts=attempts,
                failed_at=failed_at,
                error=error,
            )
        except Exception as publish_error:
            return f"{type(publish_error).__name__}: {describe(publish_error, 300)}"
        return None


def _stored(record: Record, key: dict[str, object], publish_error: str) -> dict[str, object]:
    headers = {_pg_text(k): _pg_text(v) for k, v in headers_text(record).items()}
    return {
        **key,
        "publish_error": _pg_text(publish_error),
        "key": record.key,
        "value": record.value,
        "headers": json.dumps(headers),
    }


async def purge_published_before(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete one bounded batch of dead-letter claims published before ``cutoff``.

    Dead letters kept here because Kafka would not take them stay until an operator removes them.
    """
    return await delete_batch(
        session,
        DeadLetterRecord.handler,
        DeadLetterRecord.topic,
        DeadLetterRecord.partition,
        DeadLetterRecord.offset,
        where=DeadLetterRecord.published_at < cutoff,
        batch_size=batch_size,
    )
