"""Publishing events to Kafka: an envelope per event, on the topic the registry names, keyed by aggregate.

``EventPublisher`` wraps a FastStream ``KafkaBroker`` built by ``dianabot_core.kafka.create_broker``
(idempotent producer, ``acks=all``), so an awaited publish is durable on the broker or raises.
``enqueue`` is the ordered primitive underneath: it appends a record to the producer's buffer
and returns the acknowledgement to await later, so a caller (the outbox relay) can send many
records in order and wait for all of them at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from faststream.kafka import KafkaBroker

from dianabot_contracts.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE, EventEnvelope, EventPayload
from dianabot_contracts.topics import topic_for

CONTENT_TYPE = "content-type"


def _as_future(pending: object) -> asyncio.Future[Any]:
    # The real producer hands back an asyncio future of RecordMetadata; TestKafkaBroker's fake
    # producer delivers synchronously and hands back None.
    if isinstance(pending, asyncio.Future):
        return pending
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(pending)
    return done


class EventPublisher:
    """Publishes events as ``producer``; every ``publish*`` returns once Kafka acknowledged."""

    def __init__(self, broker: KafkaBroker, producer: str) -> None:
        self._broker = broker
        self._producer = producer

    @property
    def producer(self) -> str:
        return self._producer

    @property
    def broker(self) -> KafkaBroker:
        return self._broker

    async def publish(
        self,
        payload: EventPayload,
        *,
        caused_by: EventEnvelope | None = None,
        event_id: UUID | None = None,
        headers: Mapping[str, str] | None = None,
        topic: str | None = None,
    ) -> EventEnvelope:
        """Wrap ``payload`` in an envelope, publish it on its registry topic (or ``topic``), return it."""
        envelope = EventEnvelope.wrap(
            payload, producer=self._producer, caused_by=caused_by, event_id=event_id
        )
        await self.publish_envelope(envelope, topic or topic_for(payload).name, headers)
        return envelope

    async def publish_envelope(
        self, envelope: EventEnvelope, topic: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish an envelope that already exists (a retry, a relayed event) and wait for the ack."""
        await (
            await self.enqueue(
                topic,
                key=envelope.key,
                body=envelope.to_body(),
                headers={**(headers or {}), **envelope.to_headers()},
                correlation_id=str(envelope.correlation_id or envelope.event_id),
            )
        )

    async def enqueue(
        self,
        topic: str,
        *,
        key: str,
        body: bytes,
        headers: Mapping[str, str],
        correlation_id: str | None = None,
    ) -> asyncio.Future[Any]:
        """Append one record to the producer's buffer; await the result for the broker's ack.

        Records enqueued one after another (each call awaited before the next) keep their order
        within a partition: the idempotent producer sends one batch per partition at a time and
        retries it in place. The future resolves to aiokafka's RecordMetadata (None under
        TestKafkaBroker). ``headers`` must carry ``event_id`` and ``event_type``.
        """
        if HEADER_EVENT_ID not in headers or HEADER_EVENT_TYPE not in headers:
            raise ValueError("a record needs the event_id and event_type headers")
        pending = await self._broker.publish(
            body,
            topic,
            key=key.encode(),
            headers={CONTENT_TYPE: "application/json", **headers},
            correlation_id=correlation_id,
            no_confirm=True,
        )
        return _as_future(pending)
