"""OpenTelemetry tracing: one trace from a bot's publish through Kafka, the handler and its SQL.

FastStream's Kafka middleware propagates the trace context in record headers; the pipeline opens
each handler's span as a child of it; SQLAlchemy and aiohttp instrumentation add the SQL and
HTTP (Telegram) spans beneath. Spans are exported over OTLP/HTTP when an endpoint is configured,
and not at all otherwise.

aiogram puts the bot token into every request URL (``/bot<token>/sendMessage``), and aiohttp quotes
that URL in some errors: every span reaches its exporter with Bot API tokens scrubbed from its name,
attributes, events (exception messages and stack traces) and status (``redact_secrets``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import get_meter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes, AttributeValue
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from dianabot_core.redaction import redact_secrets
from dianabot_core.settings import TelemetrySettings

_provider: TracerProvider | None = None
_traced_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


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
                RedactingSpanProcessor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
            )
        trace.set_tracer_provider(_provider)
        AioHttpClientInstrumentor().instrument(tracer_provider=_provider, url_filter=_redacted_url)
    for processor in extra_processors:
        _provider.add_span_processor(RedactingSpanProcessor(processor))
    return _provider


def _redacted_url(url: URL) -> str:
    return redact_secrets(str(url))


class RedactingSpanProcessor(SpanProcessor):
    """Hands `processor` each ended span with Bot API tokens scrubbed (see the module docstring)."""

    def __init__(self, processor: SpanProcessor) -> None:
        self._processor = processor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._processor.on_end(redacted_span(span))

    def shutdown(self) -> None:
        self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._processor.force_flush(timeout_millis)


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """`span` itself when it holds no token, else a copy with every token replaced."""
    name = redact_secrets(span.name)
    attributes = _redacted_attributes(span.attributes)
    events = [Event(e.name, _redacted_attributes(e.attributes), e.timestamp) for e in span.events]
    description = span.status.description
    status = Status(span.status.status_code, redact_secrets(description)) if description else span.status
    unchanged = (
        name == span.name
        and attributes == span.attributes
        and all(new.attributes == old.attributes for new, old in zip(events, span.events, strict=True))
        and status.description == description
    )
    if unchanged:
        return span
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _redacted_attributes(attributes: Attributes) -> Attributes:
    if not attributes:
        return attributes
    return {key: _redacted_value(value) for key, value in attributes.items()}


def _redacted_value(value: AttributeValue) -> AttributeValue:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, Sequence) and value and isinstance(value[0], str):
        return [redact_secrets(str(item)) for item in value]
    return value


def instrument_engine(engine: AsyncEngine, provider: TracerProvider | None) -> None:
    """Trace this engine's statements (text recorded, bound parameters not: they may carry user data).

    Per engine, not through ``SQLAlchemyInstrumentor().instrument``: that one is a process-wide
    singleton that ignores every call after the first, so a second engine (another app factory in
    the same process, a test) would silently go untraced.
    """
    if provider is None or engine.sync_engine in _traced_engines:
        return
    _traced_engines.add(engine.sync_engine)
    connections = get_meter(__name__).create_up_down_counter(
        name="db.client.connections.usage", unit="connections", description="Connections by state."
    )
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(tracer, engine.sync_engine, connections)  # type: ignore[no-untyped-call]


def kafka_middlewares(provider: TracerProvider | None) -> tuple[KafkaTelemetryMiddleware, ...]:
    """FastStream's telemetry middleware: publish spans and trace context in record headers."""
    return () if provider is None else (KafkaTelemetryMiddleware(tracer_provider=provider),)
