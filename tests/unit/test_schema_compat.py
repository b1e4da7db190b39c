"""The compatibility rules (`dianabot_contracts.compat`) on pairs of JSON Schemas: breaks and widening."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from dianabot_contracts.compat import (
    ENUM_NARROWED,
    NARROWED,
    REMOVED,
    REQUIRED,
    TYPE_CHANGED,
    Break,
    breaking_changes,
)

Schema = dict[str, Any]


def _obj(required: tuple[str, ...] = (), **fields: Schema) -> Schema:
    return {"type": "object", "properties": fields, "required": list(required), "title": "Payload"}


INT: Schema = {"type": "integer"}
STR: Schema = {"type": "string"}
NULLABLE_STR: Schema = {"anyOf": [STR, {"type": "null"}], "default": None}
BASE = _obj(("user_id",), user_id=INT, note=NULLABLE_STR)


def _found(old: Schema, new: Schema) -> list[tuple[str, str]]:
    return [(b.field, b.rule) for b in breaking_changes(old, new)]


# --- each kind of break --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(_obj(("user_id",), user_id=INT), [("note", REMOVED)], id="optional field removed"),
        pytest.param(_obj((), note=NULLABLE_STR), [("user_id", REMOVED)], id="required field removed"),
        pytest.param(
            _obj(("user_id", "plan"), user_id=INT, note=NULLABLE_STR, plan=STR),
            [("plan", REQUIRED)],
            id="new required field",
        ),
        pytest.param(
            _obj(("user_id", "note"), user_id=INT, note=NULLABLE_STR),
            [("note", REQUIRED)],
            id="optional field now required",
        ),
        pytest.param(
            _obj(("user_id",), user_id=STR, note=NULLABLE_STR), [("user_id", TYPE_CHANGED)], id="retyped"
        ),
        pytest.param(
            _obj(("user_id",), user_id=INT, note=STR), [("note", TYPE_CHANGED)], id="null no longer allowed"
        ),
        pytest.param(
            _obj(
                ("user_id",),
                user_id=INT,
                note={"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]},
            ),
            [("note", NARROWED)],
            id="a bound added",
        ),
        pytest.param(
            _obj(("user_id",), user_id={"type": "integer", "exclusiveMinimum": 0}, note=NULLABLE_STR),
            [("user_id", NARROWED)],
            id="a minimum added",
        ),
        pytest.param(
            _obj(("user_id",), user_id=INT, note={"type": ["string", "null"], "format": "uuid"}),
            [("note", NARROWED)],
            id="a format added",
        ),
        pytest.param(
            {**BASE, "additionalProperties": False}, [("", NARROWED)], id="unlisted fields no longer accepted"
        ),
    ],
)
def test_a_change_that_breaks_producers_is_named_by_field_and_rule(
    new: Schema, expected: list[tuple[str, str]]
) -> None:
    assert _found(BASE, new) == expected


def test_a_narrowed_enum_names_the_values_it_no_longer_accepts() -> None:
    old = _obj(("plan",), plan={"type": "string", "enum": ["monthly", "yearly", "trial"]})
    new = _obj(("plan",), plan={"type": "string", "enum": ["monthly", "yearly"]})

    [found] = breaking_changes(old, new)

    assert (found.field, found.rule) == ("plan", ENUM_NARROWED)
    assert "'trial'" in found.detail


def test_a_free_string_that_becomes_an_enum_is_narrowed() -> None:
    old = _obj(("kind",), kind=STR)
    new = _obj(("kind",), kind={"enum": ["message", "reaction"], "type": "string"})
    assert _found(old, new) == [("kind", ENUM_NARROWED)]


def test_a_number_that_becomes_an_integer_is_narrowed() -> None:
    assert _found(_obj(("n",), n={"type": "number"}), _obj(("n",), n=INT)) == [("n", TYPE_CHANGED)]


def test_a_tighter_upper_bound_is_narrowed_and_a_looser_one_is_not() -> None:
    old = _obj(("text",), text={"type": "string", "maxLength": 64})
    assert _found(old, _obj(("text",), text={"type": "string", "maxLength": 32})) == [("text", NARROWED)]
    assert _found(old, _obj(("text",), text={"type": "string", "maxLength": 128})) == []


# --- nested types, as pydantic writes them -------------------------------------------------------


class _ButtonV1(BaseModel):
    text: str = Field(max_length=64)
    url: str | None = None


class _ContentV1(BaseModel):
    text: str | None = None
    buttons: tuple[_ButtonV1, ...] = ()
    counts: dict[str, int] = Field(default_factory=dict)


class _PostV1(BaseModel):
    post_id: str
    content: _ContentV1
    priority: Literal["critical", "bulk"] = "bulk"


class _ButtonV2(BaseModel):
    text: str = Field(max_length=64)


class _ContentV2(BaseModel):
    text: str | None = None
    buttons: tuple[_ButtonV2, ...] = ()
    counts: dict[str, str] = Field(default_factory=dict)


class _PostV2(BaseModel):
    post_id: str
    content: _ContentV2
    priority: Literal["critical"] = "critical"


def test_breaks_inside_nested_models_arrays_and_maps_name_the_path() -> None:
    found = _found(_PostV1.model_json_schema(), _PostV2.model_json_schema())
    assert found == [
        ("content.buttons[].url", REMOVED),
        ("content.counts.*", TYPE_CHANGED),
        ("priority", ENUM_NARROWED),
    ]


def test_a_break_reads_as_field_rule_and_detail() -> None:
    [removed] = breaking_changes(_obj(("a",), a=INT), _obj(()))
    assert removed == Break("a", REMOVED, "was integer")
    assert str(removed) == "field a: removed field (was integer)"
    [retyped] = breaking_changes(_obj(("a",), a=INT), _obj(("a",), a=STR))
    assert str(retyped) == "field a: type changed (was integer, now string)"


# --- changes producers of the old shape do not notice --------------------------------------------


class _Widened(BaseModel):
    post_id: str | int
    content: _ContentV1
    priority: Literal["critical", "bulk", "low"] | None = "bulk"
    channel: str | None = Field(None, description="new, optional")


class _Renamed(BaseModel):
    """The same shape under other model names and descriptions."""

    post_id: str = Field(description="documented now")
    content: _ContentV1
    priority: Literal["critical", "bulk"] = "bulk"


@pytest.mark.parametrize(
    "new",
    [
        pytest.param(BASE, id="unchanged"),
        pytest.param(
            _obj(("user_id",), user_id=INT, note=NULLABLE_STR, extra=NULLABLE_STR), id="optional field added"
        ),
        pytest.param(_obj((), user_id=INT, note=NULLABLE_STR), id="required field now optional"),
        pytest.param(
            _obj(("user_id",), user_id={"type": "number"}, note=NULLABLE_STR), id="integer to number"
        ),
        pytest.param(
            _obj(("user_id",), user_id={"anyOf": [INT, STR]}, note=NULLABLE_STR), id="a type added to a union"
        ),
        pytest.param(_obj(("user_id",), user_id={}, note=NULLABLE_STR), id="any value"),
        pytest.param(
            {**_obj(("user_id",), user_id=INT, note=NULLABLE_STR), "title": "Other", "description": "x"},
            id="annotations",
        ),
    ],
)
def test_a_change_producers_of_the_old_shape_do_not_notice_is_no_break(new: Schema) -> None:
    assert breaking_changes(BASE, new) == []


def test_widened_types_more_enum_values_and_new_optional_fields_are_no_break() -> None:
    old = _PostV1.model_json_schema()
    assert breaking_changes(old, _Widened.model_json_schema()) == []
    assert breaking_changes(old, _Renamed.model_json_schema()) == []


def test_a_dropped_format_or_bound_is_no_break() -> None:
    old = _obj(("at",), at={"type": "string", "format": "date-time", "minLength": 1})
    assert breaking_changes(old, _obj(("at",), at=STR)) == []


class _Node(BaseModel):
    name: str
    children: tuple[_Node, ...] = ()


class _NodeV2(BaseModel):
    name: str
    children: tuple[_NodeV2, ...] = ()
    size: int


def test_a_recursive_schema_is_compared_one_level_deep_and_the_comparison_ends() -> None:
    assert breaking_changes(_Node.model_json_schema(), _Node.model_json_schema()) == []
    assert _found(_Node.model_json_schema(), _NodeV2.model_json_schema()) == [
        ("children[].size", REQUIRED),
        ("size", REQUIRED),
    ]
