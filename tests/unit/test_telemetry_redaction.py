"""Bot API tokens are scrubbed from every span before any exporter sees it."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from dianabot_core.redaction import redact_secrets
from dianabot_core.telemetry import RedactingSpanProcessor

TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"
URL = f"https://api.telegram.org/bot{TOKEN}/sendMessage"


def test_tokens_are_found_in_urls_and_on_their_own() -> None:
    assert redact_secrets(URL) == "https://api.telegram.org/bot<redacted>/sendMessage"
    assert redact_secrets("http://h/file/bot123:short/doc.pdf") == "http://h/file/bot<redacted>/doc.pdf"
    assert redact_secrets(f"token={TOKEN}, ok") == "token=<redacted>, ok"
    for harmless in ("user:42", "dead letter 2:15", "12:30:45", "0190f3a2-7c1e-7d6f-9a55-3c1f2b9e8d7a"):
        assert redact_secrets(harmless) == harmless


def test_a_span_reaches_the_exporter_without_the_token() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor(SimpleSpanProcessor(exporter)))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span(f"POST {URL}") as span:
        span.set_attribute("http.url", URL)
        span.set_attribute("dianabot.urls", [URL, "https://example.org"])
        span.set_attribute("http.status_code", 502)
        span.record_exception(OSError(f"Can not write request body for {URL}"))
        span.set_status(Status(StatusCode.ERROR, f"failed: {URL}"))
    with tracer.start_as_current_span("clean") as clean:
        clean.set_attribute("dianabot.event_id", "e1")

    redacted, untouched = exporter.get_finished_spans()
    assert TOKEN.partition(":")[2] not in redacted.to_json()
    assert (redacted.attributes or {})["http.url"] == "https://api.telegram.org/bot<redacted>/sendMessage"
    assert (redacted.attributes or {})["http.status_code"] == 502
    assert redacted.events[0].attributes is not None
    assert "bot<redacted>" in str(redacted.events[0].attributes["exception.message"])
    assert redacted.status.status_code is StatusCode.ERROR
    assert (untouched.name, dict(untouched.attributes or {})) == ("clean", {"dianabot.event_id": "e1"})


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_log_line_and_its_traceback_never_carry_the_token(json_lines: bool) -> None:
    import logging

    from dianabot_core.logs import JsonFormatter, TextFormatter

    token = "123456:AAH-secret-part-of-the-token-0123456789"
    formatter = JsonFormatter() if json_lines else TextFormatter("%(message)s")
    try:
        raise ConnectionError(f"Cannot connect to https://api.telegram.org/bot{token}/sendMessage")
    except ConnectionError:
        import sys

        record = logging.LogRecord(
            "aiohttp", logging.ERROR, __file__, 1, "failed: %s", (token,), sys.exc_info()
        )
    line = formatter.format(record)
    assert token not in line
    assert "<redacted>" in line
