"""The record boundary: whatever bytes and headers a producer writes, decoding classifies, never raises."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faststream.kafka.message import KafkaAckableMessage
from faststream.kafka.parser import AioKafkaBatchParser
from hypothesis import given, settings
from hypothesis import strategies as st

from dianabot_contracts.envelope import EventEnvelope
from dianabot_contracts.events import UserActivity
from dianabot_core.pipeline.consumer import max_poll_interval_ms, total_parser
from dianabot_core.pipeline.errors import InfrastructureError, TransientError, retry_after_s
from dianabot_core.pipeline.handlers import HandlerGroup, HandlerSpec
from dianabot_core.pipeline.records import (
    H_DUE_AT,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_TOPIC,
    DecodedEvent,
    Malformed,
    Origin,
    Record,
    decode,
)
from dianabot_core.pipeline.routing import MAX_RETRY_AFTER_S, longest_wait_s, retry_plan

Headers = list[tuple[str, bytes | None]]


async def _noop(event: Any, ctx: Any) -> None:
    return None


def _record(
    value: bytes | None,
    headers: Headers | None = None,
    *,
    topic: str = "t",
    offset: int = 7,
    partition: int = 0,
) -> Record:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"user:1",
        value=value,
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=len(value or b""),
        headers=list(headers or []),
    )


def _envelope(**changes: Any) -> dict[str, Any]:
    payload = UserActivity(user_id=1, at=datetime(2026, 12, 1, tzinfo=UTC))
    body = EventEnvelope.wrap(payload, producer="test").model_dump(mode="json")
    return {**body, **changes}


def _reason(item: DecodedEvent | Malformed) -> str:
    assert isinstance(item, Malformed), item
    return item.reason


# --- the three records that used to stop a lane --------------------------------------------------


def test_a_body_nested_200000_levels_deep_is_malformed_not_an_error() -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    assert _reason(decode(_record(body))) == "malformed: body is nested too deeply to decode"


def test_a_5000_digit_integer_is_malformed_not_an_error() -> None:
    body = json.dumps(_envelope()).encode()[:-1] + b', "n": ' + b"9" * 5000 + b"}"
    assert (
        _reason(decode(_record(body)))
        == "malformed: body holds an integer too long to decode (over 4,300 digits)"
    )


def test_a_null_header_value_reads_as_empty_and_the_event_decodes() -> None:
    record = _record(json.dumps(_envelope()).encode(), [("traceparent", None), ("x", b"\xff\xfe")])
    assert isinstance(decode(record), DecodedEvent)


async def test_fastStreams_parser_only_sees_text_headers_and_the_pipeline_the_original_record() -> None:
    parser = AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None)
    records = (
        _record(b"{}", [("nothing", None)]),
        _record(None, [("binary", b"\xff\x00\xfe")], offset=8),
    )
    with pytest.raises(AttributeError):  # what FastStream does alone: the batch would be swallowed
        await parser.parse_batch(records)
    message = await total_parser(records, parser.parse_batch)
    assert message.raw_message is records
    assert message.batch_headers[0] == {"nothing": ""}


# --- forged pipeline headers -----------------------------------------------------------------------


def test_forged_retry_headers_on_a_source_topic_are_ignored() -> None:
    record = _record(
        json.dumps(_envelope()).encode(),
        [("x-attempt", b"99"), (H_DUE_AT, b"not a time"), (H_ORIGINAL_TOPIC, b"dianabot.payments")],
        topic="users.activity",
    )
    event = decode(record, stage=0)
    assert isinstance(event, DecodedEvent)
    assert (event.attempt, event.due_at, event.origin) == (0, None, Origin("users.activity", 0, 7))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(H_DUE_AT, b"soon")], "malformed: header x-due-at is not an integer: 'soon'"),
        ([(H_DUE_AT, b"9" * 19)], "malformed: header x-due-at is out of range: '9999999999999999999'"),
        ([(H_ORIGINAL_OFFSET, b"1e9")], "malformed: header x-original-offset is not an integer: '1e9'"),
        ([(H_DUE_AT, None)], "malformed: header x-due-at is not an integer: ''"),
        (
            [(H_ORIGINAL_TOPIC, b"t" * 300)],
            "malformed: header x-original-topic is not a topic name: " + repr("t" * 40),
        ),
    ],
)
def test_unreadable_retry_headers_on_a_retry_topic_make_the_record_malformed(
    headers: Headers, reason: str
) -> None:
    item = decode(_record(json.dumps(_envelope()).encode(), headers, topic="g.retry.1"), stage=1)
    assert _reason(item) == reason
    assert item.origin == Origin("g.retry.1", 0, 7)


def test_a_retry_record_keeps_its_origin_and_due_time_and_its_attempt_is_the_stage() -> None:
    headers: Headers = [
        (H_ORIGINAL_TOPIC, b"users.activity"),
        (H_ORIGINAL_OFFSET, b"41"),
        (H_DUE_AT, b"1000"),
    ]
    event = decode(_record(json.dumps(_envelope()).encode(), headers, topic="g.retry.2"), stage=2)
    assert isinstance(event, DecodedEvent)
    assert event.origin == Origin("users.activity", 0, 41)
    assert (event.attempt, event.due_at) == (2, datetime.fromtimestamp(1, UTC))


# --- any bytes at all ------------------------------------------------------------------------------

_header_values = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode))
_header_names = st.one_of(
    st.sampled_from(["x-attempt", "x-due-at", "x-original-topic", "x-original-offset", "traceparent"]),
    st.text(max_size=12),
)
_json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _bodies() -> st.SearchStrategy[bytes | None]:
    valid = json.dumps(_envelope()).encode()
    return st.one_of(
        st.none(),
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # truncated envelopes
        _json_like.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(list(_envelope())), _json_like).map(
            lambda changes: json.dumps(_envelope(**changes)).encode()
        ),
    )


@settings(max_examples=400, deadline=None)
@given(
    value=_bodies(),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=6),
    stage=st.integers(0, 3),
)
def test_any_bytes_and_headers_decode_or_are_classified_with_a_reason(
    value: bytes | None, headers: Headers, stage: int
) -> None:
    item = decode(_record(value, headers), stage=stage)
    if isinstance(item, Malformed):
        assert item.reason.startswith("malformed: ")
        assert len(item.reason) < 1000
    else:
        assert item.attempt == stage


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.lists(st.tuples(st.text(max_size=8), _header_values), max_size=4), min_size=1, max_size=4
    )
)
def test_the_batch_parser_accepts_any_header_values(headers: list[Headers]) -> None:
    parser = AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None)
    records = tuple(_record(b"x", h, offset=i) for i, h in enumerate(headers))
    message = asyncio.run(total_parser(records, parser.parse_batch))
    assert message.raw_message is records


# --- retry timing ------------------------------------------------------------------------------------


def test_a_retry_after_longer_than_the_next_delay_skips_to_a_stage_that_covers_it() -> None:
    delays = (10.0, 60.0, 600.0)
    assert retry_plan(delays, 1, 0.0) == (1, 10.0)
    assert retry_plan(delays, 1, 0.0, at_least_s=30) == (2, 60.0)
    assert retry_plan(delays, 1, 0.0, at_least_s=1200) == (3, 1200.0)
    assert retry_plan(delays, 4, 0.0) is None
    assert retry_plan(delays, 1, 0.0, at_least_s=MAX_RETRY_AFTER_S + 1) is None


def test_retry_after_is_read_from_transient_failures_only() -> None:
    class FloodWait(TransientError):
        retry_after_s = 42.0

    class Odd(Exception):
        retry_after_s = 42.0

    assert retry_after_s(FloodWait()) == 42.0
    assert retry_after_s(Odd()) == 0.0
    assert retry_after_s(TransientError()) == 0.0


def test_a_retry_stage_never_waits_longer_than_its_delay_except_the_last_for_a_retry_after() -> None:
    delays = (10.0, 60.0)
    assert longest_wait_s(delays, 1, 0.5) == 15.0
    assert longest_wait_s(delays, 2, 0.5) == MAX_RETRY_AFTER_S


def test_the_poll_interval_outlasts_the_slowest_batch_a_handler_can_take() -> None:
    spec = HandlerSpec[UserActivity](
        module="m",
        action="a",
        events=(UserActivity,),
        func=_noop,
        timeout_s=30,
        batch_size=100,
        retry_delays_s=(10.0,),
    )
    assert max_poll_interval_ms(spec, 0) >= 2 * 100 * 30 * 1000
    assert max_poll_interval_ms(spec, 1) >= (2 * 100 * 30 + MAX_RETRY_AFTER_S) * 1000


# --- one partition failing inside a retry batch -----------------------------------------------------


async def test_when_one_partition_fails_the_others_are_cancelled_before_the_batch_is_rewound() -> None:
    from dianabot_core.clock import SystemClock
    from dianabot_core.pipeline.runner import BatchReport, HandlerRunner, PipelineDeps

    group = HandlerGroup(f"t{uuid.uuid4().hex[:6]}")
    group.handler(UserActivity, action="noop", retry_delays_s=(1.0,))(_noop)
    deps = PipelineDeps(session_factory=None, router=None, clock=SystemClock())  # type: ignore[arg-type]
    runner = HandlerRunner(group.specs[0], "g", deps, stage=1)
    handled: list[int] = []

    async def handle_alone(event: DecodedEvent) -> BatchReport:
        if event.record.partition == 1:
            raise InfrastructureError("database unreachable")
        handled.append(event.record.partition)
        return BatchReport(handled=1)

    runner._handle_alone = handle_alone  # type: ignore[method-assign]
    due = str(int((datetime.now(UTC) + timedelta(seconds=0.3)).timestamp() * 1000)).encode()
    body = json.dumps(_envelope()).encode()
    waiting = _record(body, [(H_DUE_AT, due)], topic="g.retry.1")
    failing = _record(body, topic="g.retry.1", partition=1)
    with pytest.raises(InfrastructureError):
        await runner.process([waiting, failing])
    await asyncio.sleep(0.5)
    assert handled == []  # the waiting partition was cancelled, not left to race the re-read


# --- header keys that are not UTF-8 (aiokafka itself would raise on every poll) -------------------


class _BadKey(str):
    """A header key the pure-Python batch builder writes as bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-key"


def _batch_with_bad_header_key(compression_type: int) -> bytes:
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=compression_type,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=b"k", value=b"before", headers=[])
    builder.append(1, timestamp=None, key=b"k", value=b"bad", headers=[(_BadKey("x"), b"v")])
    builder.append(2, timestamp=None, key=b"k", value=b"after", headers=[("ok", None)])
    return bytes(builder.build())


@pytest.mark.parametrize("compression_type", [0, 1])  # none, gzip
def test_a_batch_with_a_header_key_that_is_not_utf8_is_read_whole(compression_type: int) -> None:
    from aiokafka.record.memory_records import MemoryRecords

    from dianabot_core.pipeline.lenient_records import LenientMemoryRecords

    data = _batch_with_bad_header_key(compression_type)
    with pytest.raises(UnicodeDecodeError):  # aiokafka's own reader
        list(MemoryRecords(data).next_batch())
    records = list(LenientMemoryRecords(data).next_batch())
    assert [(r.offset, r.value, r.headers) for r in records] == [
        (0, b"before", []),
        (1, b"bad", [("\ufffd\ufffd-key", b"v")]),
        (2, b"after", [("ok", None)]),
    ]
