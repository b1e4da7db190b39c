"""OpenTelemetry tracing: one trace from a bot's publish through Kafka, the handler and its SQL.

FastStream's Kafka middleware propagates the trace context in record headers; the pipeline opens
each handler's span as a child of it; SQLAlchemy and aiohttp instrumentation add the SQL and
HTTP (Telegram) spans beneath. Spans are exported over OTLP/HTTP when an endpoint is configured,
and not at all otherwise.
"""

from __future__ import annotations

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from sqlalchemy.ext.asyncio import AsyncEngine

from core.settings import TelemetrySettings

_provider: TracerProvider | None = None


def setup_tracing(settings: TelemetrySettings, *extra_processors: SpanProcessor) -> TracerProvider | None:
    """Install the process-wide tracer provider once; later calls return the same provider.

    With no OTLP endpoint (and no extra processor, as tests add) nothing is installed: spans stay
    OpenTelemetry's no-op spans, so an untraced deployment pays nothing per event or per SQL
    statement, while an incoming trace context still reaches the logs.
    """
    global _provider
    if _provider is None:
        if not settings.otlp_endpoint and not extra_processors:
            return None
        sampler = ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
        _provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}), sampler=sampler
        )
        if settings.otlp_endpoint:
            _provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
            )
        trace.set_tracer_provider(_provider)
        AioHttpClientInstrumentor().instrument(tracer_provider=_provider)
    for processor in extra_processors:
        _provider.add_span_processor(processor)
    return _provider


def instrument_engine(engine: AsyncEngine, provider: TracerProvider | None) -> None:
    if provider is None:
        return
    # Statement text is recorded, bound parameters are not: they may carry user data.
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, tracer_provider=provider)


def kafka_middlewares(provider: TracerProvider | None) -> tuple[KafkaTelemetryMiddleware, ...]:
    """FastStream's telemetry middleware: publish spans and trace context in record headers."""
    return () if provider is None else (KafkaTelemetryMiddleware(tracer_provider=provider),)
