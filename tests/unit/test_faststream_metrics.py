"""FastStream's Prometheus middleware on the service's registry (dianabot_core/faststream_metrics.py).

Brokers come from ``dianabot_core.kafka.create_broker``, as the service builds them, on FastStream's
in-memory ``TestKafkaBroker``; the registry is the process's one, which ``/metrics`` serves. Each
test reads and publishes on topics of its own, so the counts are its own.
"""

from __future__ import annotations

import uuid

import pytest
from faststream import AckPolicy
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from dianabot_core.faststream_metrics import DISCARDED, FASTSTREAM_METRICS
from dianabot_core.kafka import create_broker
from dianabot_core.settings import KafkaSettings

PREFIX = "dianabot_faststream"
# Shaped like a real Bot API token, and a SASL password: neither may reach a label value.
TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"
PASSWORD = "sasl-Pa55word-that-must-stay-hidden"


def _topic() -> str:
    return f"test.metrics.{uuid.uuid4().hex[:12]}"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _samples_of(topic: str) -> list[str]:
    return [
        sample.name
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("topic") == topic
    ]


def test_every_broker_the_service_builds_carries_the_middleware_innermost() -> None:
    assert list(create_broker(KafkaSettings()).middlewares) == [FASTSTREAM_METRICS.middleware]
    tracing = KafkaTelemetryMiddleware()
    traced = create_broker(KafkaSettings(), middlewares=(tracing,))
    assert list(traced.middlewares) == [tracing, FASTSTREAM_METRICS.middleware]


async def test_a_batch_read_shows_on_the_service_registry_by_topic() -> None:
    broker = create_broker(KafkaSettings())
    topic = _topic()
    in_process: list[float] = []

    # As the pipeline subscribes: batches, committed by hand.
    @broker.subscriber(topic, group_id="test.metrics", batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(message: KafkaMessage) -> None:
        in_process.append(_value(f"{PREFIX}_in_process_messages", topic=topic))
        await message.ack()

    async with TestKafkaBroker(broker):
        await broker.publish(b"hello", topic)
        await broker.publish_batch(b"a", b"bcd", topic=topic)

    assert in_process == [1, 2]  # the records of the batch being handled
    assert _value(f"{PREFIX}_in_process_messages", topic=topic) == 0
    assert _value(f"{PREFIX}_received_messages_total", topic=topic) == 3
    assert _value(f"{PREFIX}_received_messages_size_bytes_count", topic=topic) == 2  # batches
    assert _value(f"{PREFIX}_received_messages_size_bytes_sum", topic=topic) == len(b"helloabcd")
    assert _value(f"{PREFIX}_received_messages_size_bytes_bucket", topic=topic, le="1024.0") == 2
    scraped = generate_latest(REGISTRY).decode()
    assert f'{PREFIX}_received_messages_total{{topic="{topic}"}} 3.0' in scraped


async def test_a_publish_is_not_measured() -> None:
    broker = create_broker(KafkaSettings())
    unread = _topic()

    async with TestKafkaBroker(broker):
        await broker.publish(b"hello", unread)
        await broker.publish_batch(b"a", b"b", topic=unread)

    assert _samples_of(unread) == []


async def test_a_failing_handler_puts_no_secret_into_a_label() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="dianabot", sasl_password=SecretStr(PASSWORD)
    )
    broker = create_broker(settings)
    topic = _topic()

    # In memory, a handler's error comes back to the publisher.
    @broker.subscriber(topic, group_id="test.metrics", batch=True)
    async def fail(body: list[bytes]) -> None:
        raise RuntimeError(f"POST https://api.telegram.org/bot{TOKEN}/sendMessage ({PASSWORD})")

    async with TestKafkaBroker(broker):
        with pytest.raises(RuntimeError, match="sendMessage"):
            await broker.publish(TOKEN.encode(), topic, headers={"authorization": PASSWORD}, key=b"k")

    assert _value(f"{PREFIX}_received_messages_total", topic=topic) == 1
    assert _value(f"{PREFIX}_in_process_messages", topic=topic) == 0
    scraped = generate_latest(REGISTRY).decode()
    for secret in (TOKEN, TOKEN.partition(":")[2], PASSWORD):
        assert secret not in scraped
    for family in REGISTRY.collect():
        if family.name.startswith(PREFIX):
            for sample in family.samples:
                assert set(sample.labels) <= {"topic", "le"}, sample


def test_only_what_core_metrics_lacks_is_exposed_with_a_topic_label() -> None:
    families = {f.name: f for f in REGISTRY.collect() if f.name.startswith(PREFIX)}
    assert set(families) == {
        f"{PREFIX}_received_messages",  # a counter: exposed as ..._total
        f"{PREFIX}_received_messages_size_bytes",
        f"{PREFIX}_in_process_messages",
    }
    assert all(family.documentation for family in families.values())


def test_what_is_left_out_is_not_even_updated() -> None:
    # Fails when a FastStream release moves its metrics container: the saving would be lost.
    assert FASTSTREAM_METRICS.discarded == DISCARDED
