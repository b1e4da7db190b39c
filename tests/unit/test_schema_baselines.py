"""Evolving a contract against its published baselines (``dianabot_contracts.baselines``), on a test event.

``test.greeted`` v1 carried one ``name``; the breaking v2 splits it into first and last names. The
committed docs/schemas and the real contracts are checked in tests/unit/test_contracts.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import Field

from dianabot_contracts import baselines
from dianabot_contracts.envelope import EventEnvelope, EventPayload
from dianabot_contracts.upcasters import Upcasters
from dianabot_core.pipeline.records import DecodedEvent, decode


class GreetedV1(EventPayload):
    event_type: ClassVar[str] = "test.greeted"
    user_id: int
    name: str

    def aggregate_key(self) -> str:
        return f"user:{self.user_id}"


class GreetedWithLocale(GreetedV1):
    """v1 and an optional field: no producer of v1 notices."""

    locale: str | None = Field(None, max_length=8)


class GreetedSplitInPlace(EventPayload):
    """The v2 shape left at version 1: producers of v1 break."""

    event_type: ClassVar[str] = "test.greeted"
    user_id: int
    first_name: str
    last_name: str = ""

    def aggregate_key(self) -> str:
        return f"user:{self.user_id}"


class GreetedV2(GreetedSplitInPlace):
    schema_version: ClassVar[int] = 2


def split_name(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload.pop("name").partition(" ")
    return {**payload, "first_name": first, "last_name": last}


def with_split_name() -> Upcasters:
    upcasters = Upcasters()
    upcasters.register("test.greeted", from_version=1)(split_name)
    return upcasters


V1 = baselines.payload_schema(GreetedV1)
PUBLISHED_V1 = {"test.greeted": {1: V1}}


def test_a_breaking_change_left_at_the_same_version_names_the_event_fields_and_rules() -> None:
    found = baselines.problems(PUBLISHED_V1, [GreetedSplitInPlace], Upcasters())
    assert found == [
        "test.greeted: the payload breaks producers of schema_version 1 (test.greeted/v1.json):",
        "  field name: removed field (was string)",
        "  field first_name: new required field (producers of the old shape do not send it)",
        "  raise GreetedSplitInPlace.schema_version to 2 and register an upcaster from v1 "
        "(docs/README.md, 'Evolving a contract')",
    ]


def test_an_optional_field_needs_no_new_version() -> None:
    assert baselines.problems(PUBLISHED_V1, [GreetedWithLocale], Upcasters()) == []


def test_a_raised_version_needs_an_upcaster_from_every_published_one() -> None:
    assert baselines.problems(PUBLISHED_V1, [GreetedV2], Upcasters()) == [
        "test.greeted: v1 is published but no upcaster leads from it to v2: register one from v1 "
        "(docs/README.md, 'Evolving a contract')"
    ]
    published = {"test.greeted": {1: V1, 2: baselines.payload_schema(GreetedV2)}}
    assert baselines.problems(published, [GreetedV2], with_split_name()) == []


def test_a_published_version_above_the_codes_or_a_vanished_event_type_is_a_problem() -> None:
    published = {"test.greeted": {1: V1, 2: baselines.payload_schema(GreetedV2)}}
    assert baselines.problems(published, [GreetedV1], Upcasters()) == [
        "test.greeted: v2 is published but GreetedV1.schema_version is 1 (a version is never lowered)"
    ]
    assert baselines.problems(published, [], Upcasters()) == [
        "test.greeted: published (v1, v2) but no contract has this event type any more, "
        "so its producers' records would be malformed"
    ]


def test_the_writer_follows_compatible_changes_and_keeps_a_baseline_a_change_would_break(
    tmp_path: Path,
) -> None:
    v1_file = tmp_path / "test.greeted" / "v1.json"
    assert baselines.write_baselines(tmp_path, [GreetedV1], Upcasters()) == []
    assert json.loads(v1_file.read_text()) == V1

    found = baselines.write_baselines(tmp_path, [GreetedSplitInPlace], Upcasters())
    assert "  field name: removed field (was string)" in found
    assert json.loads(v1_file.read_text()) == V1  # refused: producers of v1 still send `name`

    assert baselines.write_baselines(tmp_path, [GreetedWithLocale], Upcasters()) == []
    assert "locale" in json.loads(v1_file.read_text())["properties"]

    assert baselines.write_baselines(tmp_path, [GreetedV2], with_split_name()) == []
    assert baselines.read(tmp_path)["test.greeted"].keys() == {1, 2}
    assert "locale" in json.loads(v1_file.read_text())["properties"]  # an older version stays as published


def test_evolving_a_contract_end_to_end_a_v1_record_reaches_the_v2_handler() -> None:
    upcasters = with_split_name()
    published = {"test.greeted": {1: V1, 2: baselines.payload_schema(GreetedV2)}}
    assert baselines.problems(published, [GreetedV2], upcasters) == []

    body = EventEnvelope.wrap(GreetedV1(user_id=1, name="Diana Lopez"), producer="old-bot").to_body()
    record: Any = ConsumerRecord("t", 0, 0, 0, 0, b"user:1", body, None, 6, len(body), [])
    event = decode(record, {"test.greeted": GreetedV2}, upcasters=upcasters)

    assert isinstance(event, DecodedEvent)
    assert event.envelope.schema_version == 1
    assert event.payload == GreetedV2(user_id=1, first_name="Diana", last_name="Lopez")


# --- the command (`make schemas`) ------------------------------------------------------------------


def test_the_command_writes_the_schemas_and_check_finds_stale_or_extra_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "schemas"
    assert baselines.main(["--out", str(out)]) == 0
    assert (out / "user.registered" / "v1.json").is_file()
    assert (out / "user.registered.schema.json").is_file()
    assert baselines.main(["--out", str(out), "--check"]) == 0
    capsys.readouterr()

    (out / "index.json").write_text("{}\n")
    (out / "user.teleported.schema.json").write_text("{}\n")
    assert baselines.main(["--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{out}/index.json is out of date (run `make schemas`)" in err
    assert f"{out}/user.teleported.schema.json is no longer generated (run `make schemas`)" in err

    assert baselines.main(["--out", str(out)]) == 0
    assert not (out / "user.teleported.schema.json").exists()
    assert baselines.main(["--out", str(out), "--check"]) == 0
    assert baselines.main(["--out", str(tmp_path / "missing"), "--check"]) == 1
