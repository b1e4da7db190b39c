"""JSON log lines: the event and trace of the work in progress, and never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from dianabot_core.logs import JsonFormatter, bind_log_context
from tests.conftest import make_settings

SECRET = "987654:do-not-print-me"


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, Callable[[], list[dict[str, Any]]]]]:
    """A logger writing JSON lines to a buffer, and a function reading them back."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield logger, read
    logger.removeHandler(handler)


Lines = tuple[logging.Logger, Callable[[], list[dict[str, Any]]]]


def test_a_line_inside_a_handler_carries_the_event_handler_and_trace(lines: Lines) -> None:
    logger, read = lines
    tracer = TracerProvider().get_tracer("test")
    event_id = str(uuid.uuid4())

    with (
        tracer.start_as_current_span("dianabot.users.register") as span,
        bind_log_context(event_id=event_id, event_type="user.registered", handler="dianabot.users.register"),
    ):
        logger.info("registered %s", "diana")
    logger.info("after the handler")

    inside, outside = read()
    context = span.get_span_context()
    assert inside["msg"] == "registered diana"
    assert inside["event_id"] == event_id
    assert inside["event_type"] == "user.registered"
    assert inside["handler"] == "dianabot.users.register"
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert outside["msg"] == "after the handler"
    assert not {"event_id", "event_type", "handler", "trace_id", "span_id"} & set(outside)


def test_nested_contexts_merge_and_unwind(lines: Lines) -> None:
    logger, read = lines
    with bind_log_context(event_id="e1", handler="h"):
        with bind_log_context(attempt=2):
            logger.info("inner")
        logger.info("outer")
    logger.info("none")

    inner, outer, none = read()
    assert (inner["event_id"], inner["handler"], inner["attempt"]) == ("e1", "h", 2)
    assert "attempt" not in outer
    assert outer["event_id"] == "e1"
    assert "event_id" not in none


async def test_the_context_follows_tasks_it_starts_but_not_concurrent_ones(lines: Lines) -> None:
    logger, read = lines
    bound = asyncio.Event()

    async def handler() -> None:
        with bind_log_context(event_id="e-handler"):
            bound.set()
            await asyncio.create_task(_log(logger, "child"))
            await asyncio.sleep(0)

    async def bystander() -> None:
        await bound.wait()
        logger.info("bystander")

    await asyncio.gather(handler(), bystander())

    by_message = {line["msg"]: line for line in read()}
    assert by_message["child"]["event_id"] == "e-handler"
    assert "event_id" not in by_message["bystander"]


async def _log(logger: logging.Logger, message: str) -> None:
    logger.info(message)


def test_a_secret_in_extra_is_masked(lines: Lines) -> None:
    logger, read = lines
    logger.info(
        "connecting",
        extra={
            "token": SecretStr(SECRET),
            "auth": {"password": SecretStr(SECRET)},
            "settings": make_settings(),
        },
    )

    [line] = read()
    raw = json.dumps(line)
    assert SECRET not in raw
    assert "123456:test-token" not in raw  # make_settings()'s bot token
    assert "dianabot:dianabot@" not in raw  # the database URL's credentials
    assert line["token"] == "**********"
    assert line["auth"] == {"password": "**********"}
