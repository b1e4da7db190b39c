"""Kafka connection: the broker factory and a start-up reachability check."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from dianabot_core.faststream_metrics import FASTSTREAM_METRICS
from dianabot_core.settings import KafkaSettings


class KafkaUnreachableError(RuntimeError):
    """Start-up could not reach the broker; the message names the bootstrap address."""


def _security(settings: KafkaSettings) -> BaseSecurity | None:
    ssl_context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        ssl_context = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.security_protocol.startswith("SASL"):
        username = settings.sasl_username or ""
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        use_ssl = settings.security_protocol == "SASL_SSL"
        mechanism = {"SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}.get(
            settings.sasl_mechanism or "PLAIN", SASLPlaintext
        )
        return mechanism(username, password, ssl_context=ssl_context, use_ssl=use_ssl)
    if ssl_context is not None:
        return BaseSecurity(ssl_context=ssl_context, use_ssl=True)
    return None


class KafkaBrokerStartingTogether(KafkaBroker):
    """A KafkaBroker whose subscribers start concurrently.

    FastStream starts them one after another, and each start (aiokafka's ``consumer.start()``)
    waits until its group has assigned it partitions. A consumers process runs 37 groups: on a
    loaded machine, or while the other processes' groups rebalance, the sum of 37 joins kept a
    restarted process from reading its last groups for 10-40 s (``make chaos``); together it takes
    about as long as the slowest join.
    """

    async def start(self) -> None:
        await self.connect()
        # BrokerUsecase.start, with the subscribers' starts gathered. A failed start does not cancel
        # the others: aiokafka leaks the socket of a connection cancelled mid-handshake. Raised as
        # a sequential start would: the first failure, once every start has ended.
        results = await asyncio.gather(*(s.start() for s in self.subscribers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for publisher in self.publishers:
            await publisher.start()
        self.running = True


def create_broker(settings: KafkaSettings, *, middlewares: Sequence[Any] = (), **options: Any) -> KafkaBroker:
    """A broker whose producer is idempotent with acks=all: a publish is durable or it fails.

    Every broker also counts what its subscribers read on the process's /metrics (FastStream's
    Prometheus middleware, innermost: ``dianabot_core.faststream_metrics``).
    """
    return KafkaBrokerStartingTogether(
        settings.bootstrap_servers,
        client_id=settings.client_id,
        security=_security(settings),
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        max_request_size=settings.max_record_bytes,
        middlewares=(*middlewares, FASTSTREAM_METRICS.middleware),
        # FastStream's "Received" / "Processed" lines, one pair per batch: at INFO they were ~6 % of
        # a process's time at 1,000 events/s and most of its log volume. What a batch did is in
        # the pipeline's own logs (failures, dead letters) and metrics.
        log_level=logging.DEBUG,
        **options,
    )


def admin_client(settings: KafkaSettings, purpose: str = "admin") -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-{purpose}",
        request_timeout_ms=int(settings.connect_timeout_s * 1000),
        **_admin_security_options(settings),
    )


async def start_admin_within(admin: AIOKafkaAdminClient, timeout_s: float) -> None:
    """Start `admin`, or raise TimeoutError after `timeout_s`, without cancelling its start.

    aiokafka leaks the socket of a connection whose start is cancelled after it connected and
    before its handshake ended (an unclosed connection per timed-out probe, for the process's
    life). The start runs on, bounded by the client's own request timeout, and the client is
    closed when it ends; the caller only stops waiting for it.
    """
    starting = asyncio.ensure_future(admin.start())
    try:
        await asyncio.wait_for(asyncio.shield(starting), timeout_s)
    except BaseException:
        _close_when_done(admin, starting)
        raise


def _close_when_done(admin: AIOKafkaAdminClient, starting: asyncio.Future[None]) -> None:
    def close(_: asyncio.Future[None]) -> None:
        if not starting.cancelled():
            starting.exception()  # retrieved: the caller reported the failure already
        _CLOSING.add(closing := asyncio.ensure_future(admin.close()))
        closing.add_done_callback(_CLOSING.discard)

    starting.add_done_callback(close)


_CLOSING: set[asyncio.Future[None]] = set()  # closes in flight, referenced until they end


async def ensure_kafka_reachable(settings: KafkaSettings) -> None:
    """Ask the broker for its metadata, or fail with one line naming the address."""
    admin = admin_client(settings, "preflight")
    try:
        await start_admin_within(admin, settings.connect_timeout_s)
    except Exception as error:
        raise KafkaUnreachableError(
            f"Kafka is unreachable at {settings.bootstrap_servers}: {type(error).__name__}"
        ) from None
    await admin.close()


def _admin_security_options(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.sasl_mechanism or "PLAIN",
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        )
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=settings.ssl_cafile)
    return options
