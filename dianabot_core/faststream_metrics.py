"""FastStream's Prometheus middleware on the service's registry, for what ``dianabot_core.metrics`` lacks.

``dianabot_core.kafka.create_broker`` puts FastStream's Prometheus middleware (the Kafka one's settings) on
every broker. It writes into a registry of its own; the process's registry (``/metrics``) shows
only these of its families, named ``dianabot_faststream_*``, with FastStream's ``handler`` label (a
topic name, where ``handler`` in ``dianabot_events_total`` is a handler's name) called ``topic`` and
its constant ``app_name`` and ``broker`` labels left out:

    dianabot_faststream_received_messages_total       records read, by topic
    dianabot_faststream_received_messages_size_bytes  bytes of record values per batch read, by topic
    dianabot_faststream_in_process_messages           records of the batches being handled now, by topic

It runs once per batch read (every subscriber of the pipeline reads batches), not once per record,
and labels a whole batch with its first record's topic: a shared retry consumer's batch that spans
several retry topics counts under one of them.

Left out, because ``dianabot_core.metrics`` measures them already, they would mislead here, or they cost
more than they tell:

- ``received_processed_messages_total`` (acked / nacked records by topic): a rewound batch is
  ``dianabot_consumer_stalls_total`` (by group); the rest were acked.
- ``received_processed_messages_duration_seconds``: ``dianabot_batch_seconds`` (by group, the
  commit included).
- ``received_processed_messages_exceptions_total``: the pipeline's batch consumer lets no error
  out of the handler (it rewinds the batch), so this would stay empty; failures are
  ``dianabot_handler_failures_total``.
  These three are not even updated (``DISCARDED``).
- Every publish metric (records, exceptions, duration by topic): publishes are not measured at all
  (``_consumed_only``). They would add about a third to the CPU of each publish, the outbox relay's
  included (``python -m bench.faststream_metrics --kafka``), to count what is counted already by
  purpose (``dianabot_outbox_published_total``, ``dianabot_events_total`` retried and
  dead-lettered, ``dianabot_scheduler_ticks_total``) and, on the reading side, by topic for every
  topic the service reads (all but ``dianabot.economy``, ``dianabot.jobs`` and the dead letters,
  which it only writes). Their duration would mislead besides: the relay and the scheduler
  publish with ``no_confirm``, so it would time the hand-over to the producer's buffer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from aiokafka import ConsumerRecord
from faststream.kafka.prometheus.provider import (
    BatchKafkaMetricsSettingsProvider,
    KafkaMetricsSettingsProvider,
    settings_provider_factory,
)
from faststream.kafka.response import KafkaPublishCommand
from faststream.prometheus import PrometheusMiddleware
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

PREFIX = "dianabot_faststream"
# Bytes of one batch's record values: a record is an event envelope of about a kilobyte, a batch
# up to a few hundred of them. Few buckets: a histogram's series are multiplied by the topics read.
SIZE_BUCKETS = (2.0**10, 2.0**14, 2.0**18, 2.0**22, float("inf"))

KafkaRaw: TypeAlias = ConsumerRecord | Sequence[ConsumerRecord]  # what FastStream's Kafka subscribers read


@dataclass(frozen=True)
class _Exposed:
    name: str
    documentation: str


# FastStream's family name (a counter's without _total) -> how /metrics shows it.
EXPOSED: Mapping[str, _Exposed] = {
    f"{PREFIX}_received_messages": _Exposed(
        f"{PREFIX}_received_messages",
        "Records read by this process's consumers, by topic (a record read by several consumer "
        "groups counts once per group; a re-read after a rewind counts again).",
    ),
    f"{PREFIX}_received_messages_size_bytes": _Exposed(
        f"{PREFIX}_received_messages_size_bytes",
        "Bytes of record values per batch read, by topic (_sum: bytes read; _count: batches).",
    ),
    f"{PREFIX}_received_messages_in_process": _Exposed(
        f"{PREFIX}_in_process_messages",
        "Records of the batches being handled now, by topic.",
    ),
}
# The metrics of FastStream's container left out above that it would update on every batch: about
# a third of its cost per batch (label look-ups under a lock). A stand-in that does nothing takes
# their updates.
DISCARDED = (
    "received_processed_messages_total",
    "received_processed_messages_duration_seconds",
    "received_processed_messages_exceptions_total",
)
RENAMED_LABELS = {"handler": "topic"}
CONSTANT_LABELS = frozenset({"app_name", "broker"})  # one app, one broker: noise on every series


def _consumed_only(
    msg: KafkaRaw | None,
) -> KafkaMetricsSettingsProvider | BatchKafkaMetricsSettingsProvider | None:
    """FastStream's Kafka settings for a record or a batch read; none for a publish (its ``msg`` is
    None), which the middleware then passes straight through."""
    return None if msg is None else settings_provider_factory(msg)


class _Discarded:
    """Takes a metric update (``labels(...).inc()``, ``.dec()``, ``.observe()``) and does nothing."""

    def labels(self, *values: str, **labels: str) -> _Discarded:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


class FastStreamMetrics:
    """A prometheus_client collector: the middleware's families of ``EXPOSED``, renamed."""

    def __init__(self) -> None:
        self._source = CollectorRegistry(auto_describe=True)
        self.middleware = PrometheusMiddleware[KafkaRaw, KafkaPublishCommand](
            # As in FastStream's KafkaPrometheusMiddleware: its providers are typed per record or batch.
            settings_provider_factory=_consumed_only,  # type: ignore[arg-type]
            registry=self._source,
            metrics_prefix=PREFIX,
            received_messages_size_buckets=SIZE_BUCKETS,
        )
        # FastStream's container is not public: should a release rename it or its attributes, the
        # metrics stay right and only the saving is lost (tests/unit/test_faststream_metrics.py
        # checks ``discarded``).
        container = getattr(self.middleware, "_metrics_container", None)
        self.discarded = tuple(name for name in DISCARDED if hasattr(container, name))
        for name in self.discarded:
            setattr(container, name, _Discarded())

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            exposed = EXPOSED.get(family.name)
            if exposed is None:
                continue
            metric = Metric(exposed.name, exposed.documentation, family.type)
            metric.samples = [
                sample._replace(
                    name=exposed.name + sample.name.removeprefix(family.name),
                    labels={
                        RENAMED_LABELS.get(label, label): value
                        for label, value in sample.labels.items()
                        if label not in CONSTANT_LABELS
                    },
                )
                for sample in family.samples
            ]
            yield metric

    def describe(self) -> Iterator[Metric]:
        """The families, so the registry refuses a clash with a name already registered."""
        return self.collect()


FASTSTREAM_METRICS = FastStreamMetrics()
REGISTRY.register(FASTSTREAM_METRICS)
