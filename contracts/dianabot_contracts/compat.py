"""Whether a payload's new JSON Schema still accepts what producers of the old one send.

``breaking_changes(old, new)`` compares two JSON Schemas as pydantic writes them (objects,
``$ref`` into ``$defs``, ``anyOf`` unions, enums, formats and bounds) and lists every change that
breaks a producer of `old`: a removed field, a new required field, a field whose type changed or
narrowed, a narrowed enum, a tighter bound, format or pattern. Widening is no break: a new
optional field, a wider type, more enum values, a looser bound.

The comparison is structural and errs on the strict side (``ge=1`` replacing ``gt=0`` counts as
narrowed). Rules in model validators (``exactly one of template or content``) are not in the
schemas, so a change to them is not seen here. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

REMOVED = "removed field"
REQUIRED = "new required field"
TYPE_CHANGED = "type changed"
ENUM_NARROWED = "enum narrowed"
NARROWED = "constraint narrowed"

Schema = Mapping[str, Any]

# Keywords that would also narrow a value when a new schema adds or tightens them.
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_EXACT = ("format", "pattern", "multipleOf", "contentEncoding")
_UNION = ("anyOf", "oneOf")


@dataclass(frozen=True, slots=True)
class Break:
    """One change that breaks producers of the old schema."""

    field: str
    """Dotted path from the payload (``content.text``); ``[]`` is an array's items, ``*`` a map's values."""
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"field {self.field or '(the payload itself)'}: {self.rule} ({self.detail})"


def breaking_changes(old: Schema, new: Schema) -> list[Break]:
    """Every way `new` rejects a value `old` accepted (within what a structural comparison sees)."""
    found = _Comparison(old, new).schema(old, new, "")
    return list(dict.fromkeys(found))  # one break may be reached through several unions


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.old_root = old_root
        self.new_root = new_root
        self.active: set[tuple[int, int]] = set()  # pairs on the current path: recursive $defs end

    def schema(self, old: Any, new: Any, path: str) -> list[Break]:
        pair = (id(old), id(new))
        if pair in self.active:
            return []
        self.active.add(pair)
        try:
            new_branches = list(_branches(new, self.new_root))
            return [
                b
                for branch in _branches(old, self.old_root)
                for b in self._branch(branch, new_branches, path)
            ]
        finally:
            self.active.discard(pair)

    def _branch(self, old: Schema, new_branches: list[Schema], path: str) -> list[Break]:
        """Breaks for one alternative of the old schema: none if some new alternative takes it whole."""
        candidates = [new for new in new_branches if _covers(_kinds(new), _kinds(old))]
        if not candidates:
            now = " | ".join(_describe(new) for new in new_branches) or "nothing"
            return [Break(path, TYPE_CHANGED, f"was {_describe(old)}, now {now}")]
        first: list[Break] | None = None
        for new in candidates:
            found = self._same_kind(old, new, path)
            if not found:
                return []
            first = first if first is not None else found
        return first or []

    def _same_kind(self, old: Schema, new: Schema, path: str) -> list[Break]:
        found = list(_values(old, new, path)) + list(_bounds(old, new, path))
        if {"object", "any"} & _kinds(old):
            found += self._object(old, new, path)
        if {"array", "any"} & _kinds(old):
            found += self._array(old, new, path)
        return found

    def _object(self, old: Schema, new: Schema, path: str) -> list[Break]:
        old_fields: Mapping[str, Any] = old.get("properties", {})
        new_fields: Mapping[str, Any] = new.get("properties", {})
        found: list[Break] = []
        for name, old_field in old_fields.items():
            if name in new_fields:
                found += self.schema(old_field, new_fields[name], _join(path, name))
            else:
                found.append(Break(_join(path, name), REMOVED, f"was {self._describe_all(old_field)}"))
        was_required = set(old.get("required", ()))
        for name in new.get("required", ()):
            if name not in was_required:
                why = "was optional" if name in old_fields else "producers of the old shape do not send it"
                found.append(Break(_join(path, name), REQUIRED, why))
        return found + self._other_fields(old, new, path)

    def _other_fields(self, old: Schema, new: Schema, path: str) -> list[Break]:
        """``additionalProperties`` (a map's values, or whether unlisted fields are allowed) and keys."""
        found: list[Break] = []
        old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if new_extra is False and old_extra is not False:
            found.append(Break(path, NARROWED, "fields the schema does not list are no longer accepted"))
        elif new_extra not in (True, False):
            found += self.schema(_as_schema(old_extra), new_extra, _join(path, "*"))
        if "propertyNames" in new:
            keys = _join(path, "(keys)")
            found += self.schema(_as_schema(old.get("propertyNames", True)), new["propertyNames"], keys)
        return found

    def _array(self, old: Schema, new: Schema, path: str) -> list[Break]:
        old_items, new_items = old.get("items", True), new.get("items", True)
        old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
        found: list[Break] = []
        for i in range(max(len(old_prefix), len(new_prefix))):
            before = old_prefix[i] if i < len(old_prefix) else old_items
            after = new_prefix[i] if i < len(new_prefix) else new_items
            found += self.schema(_as_schema(before), _as_schema(after), f"{path}[{i}]")
        if new_items is not True:
            found += self.schema(_as_schema(old_items), _as_schema(new_items), f"{path}[]")
        return found

    def _describe_all(self, node: Any) -> str:
        return " | ".join(_describe(branch) for branch in _branches(node, self.old_root)) or "nothing"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _as_schema(node: Any) -> Any:
    """``true`` (anything) as the empty schema; ``false`` and schemas as they are."""
    return {} if node is True else node


def _branches(node: Any, root: Schema) -> Iterator[Schema]:
    """The alternatives a schema accepts, each with its $refs resolved and a single type."""
    if node is True:
        yield {}
    elif not isinstance(node, Mapping):  # `false` accepts nothing
        return
    elif "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        yield from _branches({**_resolve(node["$ref"], root), **rest}, root)
    elif "allOf" in node:
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for part in node["allOf"]:
            merged.update(next(_branches(part, root), {}))
        yield from _branches(merged, root)
    elif any(key in node for key in _UNION):
        yield from _options(node, root)
    elif isinstance(node.get("type"), list):
        yield from ({**node, "type": kind} for kind in node["type"])
    else:
        yield node


def _options(node: Schema, root: Schema) -> Iterator[Schema]:
    """A union's alternatives, each with the keywords beside the union (``default``, bounds) added."""
    rest = {k: v for k, v in node.items() if k not in _UNION}
    for key in _UNION:
        for option in node.get(key, ()):
            if option is not False:
                yield from _branches({**rest, **_as_schema(option)}, root)


def _resolve(ref: str, root: Schema) -> Schema:
    target: Any = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if part:
            target = target[part.replace("~1", "/").replace("~0", "~")]
    return target if isinstance(target, Mapping) else {}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    for kind, python in (("number", float), ("string", str), ("array", list), ("object", dict)):
        if isinstance(value, python):
            return kind
    return "any"


def _kinds(schema: Schema) -> set[str]:
    """The JSON types a single-branch schema accepts; ``any`` when it names none."""
    if isinstance(schema.get("type"), str):
        return {schema["type"]}
    allowed = _allowed(schema)
    if allowed is not None:
        return {_json_type(value) for value in allowed}
    return {"any"}


def _covers(new: set[str], old: set[str]) -> bool:
    return "any" in new or all(k in new or (k == "integer" and "number" in new) for k in old)


def _allowed(schema: Schema) -> list[Any] | None:
    """The only values a schema accepts (``const`` or ``enum``), or None when it lists none."""
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    return None


def _same_value(value: Any) -> str:
    return json.dumps(value, sort_keys=True)  # 1 and True, 1 and 1.0 are different JSON values


def _values(old: Schema, new: Schema, path: str) -> Iterator[Break]:
    now = _allowed(new)
    if now is None:
        return
    was = _allowed(old)
    if was is None:
        yield Break(path, ENUM_NARROWED, f"was any {_describe(old)}, now only {now!r}")
        return
    kept = {_same_value(value) for value in now}
    if dropped := [value for value in was if _same_value(value) not in kept]:
        yield Break(path, ENUM_NARROWED, f"no longer accepts {dropped!r}")


def _bounds(old: Schema, new: Schema, path: str) -> Iterator[Break]:
    for key in _LOWER_BOUNDS + _UPPER_BOUNDS + _EXACT:
        if key not in new or new[key] == old.get(key):
            continue
        looser = key in old and (
            (key in _LOWER_BOUNDS and new[key] < old[key]) or (key in _UPPER_BOUNDS and new[key] > old[key])
        )
        if not looser:
            was = repr(old[key]) if key in old else "unset"
            yield Break(path, NARROWED, f"{key} was {was}, now {new[key]!r}")
    if new.get("uniqueItems") and not old.get("uniqueItems"):
        yield Break(path, NARROWED, "items must now be unique")


def _describe(schema: Schema) -> str:
    allowed = _allowed(schema)
    if allowed is not None:
        return f"one of {allowed!r}" if len(allowed) != 1 else f"the constant {allowed[0]!r}"
    kind = schema.get("type")
    if not isinstance(kind, str):
        return "anything"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return f"{kind} ({schema['title']})" if kind == "object" and "title" in schema else kind
