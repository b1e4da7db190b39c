"""Upcasters at the record boundary: an older payload is read in the current shape, the rest is malformed.

The contract here is a test-only event (``test.greeted``) whose v1 had one ``name`` and whose v2
splits it; no real contract has a second version yet.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.events import EVENT_TYPES, UserActivity
from dianabot_contracts.upcasters import UPCASTERS, UpcastError, Upcasters
from dianabot_core.pipeline.records import DecodedEvent, Malformed, Record, decode


class GreetedV2(EventPayload):
    event_type: ClassVar[str] = "test.greeted"
    schema_version: ClassVar[int] = 2
    user_id: int
    first_name: str
    last_name: str

    def aggregate_key(self) -> str:
        return f"user:{self.user_id}"


KNOWN: dict[str, type[EventPayload]] = {GreetedV2.event_type: GreetedV2}
V1_PAYLOAD = {"user_id": 1, "name": "Diana Lopez"}


def split_name(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {**payload, "first_name": first, "last_name": last}


def greeted_upcasters() -> Upcasters:
    upcasters = Upcasters()
    upcasters.register(GreetedV2.event_type, from_version=1)(split_name)
    return upcasters


def _record(body: dict[str, Any]) -> Record:
    value = json.dumps(body).encode()
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=3,
        timestamp=0,
        timestamp_type=0,
        key=b"user:1",
        value=value,
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=len(value),
        headers=[],
    )


def _body(payload: Any, version: Any = None, event_type: str = GreetedV2.event_type) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "0190f3d2-7b1e-7000-8000-000000000001",
        "event_type": event_type,
        "occurred_at": "2026-03-04T05:06:07+00:00",
        "producer": "bot",
        "key": "user:1",
        "payload": payload,
    }
    if version is not None:
        body["schema_version"] = version
    return body


def _reason(item: DecodedEvent | Malformed) -> str:
    assert isinstance(item, Malformed), item
    return item.reason


# --- the decode path -------------------------------------------------------------------------------


def test_an_older_version_is_upcast_then_validated_into_the_current_model() -> None:
    body = _body(V1_PAYLOAD, version=1)

    event = decode(_record(body), KNOWN, upcasters=greeted_upcasters())

    assert isinstance(event, DecodedEvent)
    assert event.payload == GreetedV2(user_id=1, first_name="Diana", last_name="Lopez")
    # The envelope is what the producer sent; the upcaster worked on a copy.
    assert (event.envelope.schema_version, event.envelope.payload) == (1, V1_PAYLOAD)


def test_a_record_without_a_version_is_version_1() -> None:
    event = decode(_record(_body(V1_PAYLOAD)), KNOWN, upcasters=greeted_upcasters())
    assert isinstance(event, DecodedEvent)
    assert event.payload.first_name == "Diana"  # type: ignore[attr-defined]


def test_the_current_version_is_not_upcast() -> None:
    payload = {"user_id": 1, "first_name": "Diana", "last_name": ""}
    event = decode(_record(_body(payload, version=2)), KNOWN, upcasters=Upcasters())
    assert isinstance(event, DecodedEvent)
    assert event.payload == GreetedV2.model_validate(payload)


def test_a_version_newer_than_the_code_knows_is_malformed() -> None:
    item = decode(_record(_body(V1_PAYLOAD, version=3)), KNOWN, upcasters=greeted_upcasters())
    assert _reason(item) == "malformed: test.greeted schema_version 3 is newer than this code knows (2)"
    huge = decode(_record(_body(V1_PAYLOAD, version=10**40)), KNOWN, upcasters=greeted_upcasters())
    assert "schema_version a number over 10**18 is newer" in _reason(huge)


def test_an_older_version_with_no_upcaster_is_malformed() -> None:
    item = decode(_record(_body(V1_PAYLOAD, version=1)), KNOWN, upcasters=Upcasters())
    assert (
        _reason(item) == "malformed: test.greeted schema_version 1 cannot be read as 2: no upcaster from v1"
    )


def test_an_upcaster_that_fails_makes_the_record_malformed_with_its_error() -> None:
    item = decode(_record(_body({"user_id": 1}, version=1)), KNOWN, upcasters=greeted_upcasters())
    assert _reason(item) == "malformed: test.greeted upcaster v1->v2 failed: KeyError: 'name'"

    odd = Upcasters()
    odd.register(GreetedV2.event_type, from_version=1)(lambda payload: [payload])  # type: ignore[arg-type,return-value]
    item = decode(_record(_body(V1_PAYLOAD, version=1)), KNOWN, upcasters=odd)
    assert _reason(item) == "malformed: test.greeted upcaster v1->v2 returned list, not a dict"


def test_an_upcast_payload_the_model_rejects_is_a_payload_schema_violation() -> None:
    item = decode(
        _record(_body({"user_id": "x", "name": "Diana"}, version=1)), KNOWN, upcasters=greeted_upcasters()
    )
    assert _reason(item).startswith("malformed: test.greeted payload schema violation: user_id: ")


def test_upcasters_chain_from_the_records_version_to_the_models() -> None:
    class GreetedV3(GreetedV2):
        schema_version: ClassVar[int] = 3
        greeting: str

    upcasters = greeted_upcasters()
    upcasters.register(GreetedV2.event_type, from_version=2)(lambda payload: {**payload, "greeting": "hola"})

    for version, payload in ((1, V1_PAYLOAD), (2, split_name(dict(V1_PAYLOAD)))):
        event = decode(
            _record(_body(payload, version)), {GreetedV3.event_type: GreetedV3}, upcasters=upcasters
        )
        assert isinstance(event, DecodedEvent), event
        assert event.payload == GreetedV3(user_id=1, first_name="Diana", last_name="Lopez", greeting="hola")


def test_todays_producers_still_decode_with_the_real_registry() -> None:
    payload = UserActivity(user_id=1, at=datetime(2026, 3, 4, tzinfo=UTC))
    body = json.loads(EventEnvelope.wrap(payload, producer="bot").to_body())
    assert isinstance(decode(_record(body)), DecodedEvent)
    del body["schema_version"]  # a producer that never sent one
    assert isinstance(decode(_record(body)), DecodedEvent)
    # No real contract has a second version yet, so no upcaster is registered.
    assert all(UPCASTERS.missing(e, 1, 2) == [1] for e in EVENT_TYPES)


# --- the registry ----------------------------------------------------------------------------------


def test_a_step_is_registered_once_and_versions_start_at_1() -> None:
    upcasters = greeted_upcasters()
    with pytest.raises(ValueError, match="already has an upcaster from v1"):
        upcasters.register(GreetedV2.event_type, from_version=1)(split_name)
    with pytest.raises(ValueError, match="start at 1"):
        upcasters.register(GreetedV2.event_type, from_version=0)
    assert upcasters.missing(GreetedV2.event_type, 1, 4) == [2, 3]
    assert upcasters.missing(GreetedV2.event_type, 2, 2) == []


def test_upcast_outside_decode_raises_upcast_error() -> None:
    with pytest.raises(UpcastError, match="newer than this code knows"):
        greeted_upcasters().upcast(GreetedV2.event_type, {}, 3, 2)
    assert greeted_upcasters().upcast(GreetedV2.event_type, dict(V1_PAYLOAD), 1, 2)["last_name"] == "Lopez"


# --- any version, any payload, any upcaster: classified, never raised ------------------------------

_json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _unruly(result: Any) -> Any:
    """An upcaster that returns `result`, or raises it when it is an exception."""

    def upcast(payload: dict[str, Any]) -> Any:
        if isinstance(result, BaseException):
            raise result
        return result

    return upcast


@settings(max_examples=300, deadline=None)
@given(
    version=st.one_of(st.integers(), _json_like),
    payload=st.one_of(st.dictionaries(st.text(max_size=8), _json_like, max_size=4), _json_like),
    result=st.one_of(
        _json_like,
        st.sampled_from([KeyError("name"), ValueError("x" * 5000), RecursionError(), TypeError()]),
    ),
)
def test_any_version_payload_and_upcaster_result_decode_or_are_malformed(
    version: Any, payload: Any, result: Any
) -> None:
    upcasters = Upcasters()
    upcasters.register(GreetedV2.event_type, from_version=1)(_unruly(result))
    item = decode(_record(_body(payload, version)), KNOWN, upcasters=upcasters)
    if isinstance(item, Malformed):
        assert item.reason.startswith("malformed: ")
        assert len(item.reason) < 1000
    else:
        assert isinstance(item.payload, GreetedV2)
