"""Upcasters: functions that bring a payload written under an older ``schema_version`` to the next one.

When a payload changes in a way that breaks its producers (see ``dianabot_contracts.compat``), its model's
``schema_version`` is raised and one upcaster per step is registered beside the model:

    @UPCASTERS.register("user.registered", from_version=1)
    def _split_name(payload: dict[str, Any]) -> dict[str, Any]:  # v1 -> v2
        first, _, last = payload.pop("name").partition(" ")
        return {**payload, "first_name": first, "last_name": last}

Consumers (``dianabot_core.pipeline.records.decode``) chain the steps from the record's version to the
model's, then validate the result into the current model. Standard library only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeAlias

Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


class UpcastError(ValueError):
    """A payload cannot be brought to the current version; the message says why."""


def _version_text(version: int) -> str:
    # A producer may send any integer; Python refuses to print one over 4,300 digits.
    return str(version) if abs(version) < 10**18 else "a number over 10**18"


class Upcasters:
    """(event type, from version) -> the function that turns that version's payload into the next's."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: the function turns a `from_version` payload into a ``from_version + 1`` one."""
        if from_version < 1:
            raise ValueError(f"schema versions start at 1, not {from_version}")

        def add(func: Upcaster) -> Upcaster:
            if (event_type, from_version) in self._steps:
                raise ValueError(f"{event_type} already has an upcaster from v{from_version}")
            self._steps[(event_type, from_version)] = func
            return func

        return add

    def missing(self, event_type: str, from_version: int, to_version: int) -> list[int]:
        """The versions between `from_version` and `to_version` that no upcaster leaves."""
        return [v for v in range(from_version, to_version) if (event_type, v) not in self._steps]

    def upcast(
        self, event_type: str, payload: dict[str, Any], from_version: int, to_version: int
    ) -> dict[str, Any]:
        """`payload` (of `from_version`) in the shape of `to_version`; UpcastError when it cannot be."""
        if from_version > to_version:
            raise UpcastError(
                f"{event_type} schema_version {_version_text(from_version)} is newer than this code "
                f"knows ({to_version})"
            )
        if missing := self.missing(event_type, from_version, to_version):
            raise UpcastError(
                f"{event_type} schema_version {from_version} cannot be read as {to_version}: "
                f"no upcaster from v{missing[0]}"
            )
        result = copy.deepcopy(payload)  # an upcaster may change what it is given
        for version in range(from_version, to_version):
            step = f"{event_type} upcaster v{version}->v{version + 1}"
            try:
                result = self._steps[(event_type, version)](result)
            except Exception as error:
                reason = " ".join(str(error).split())[:200]
                raise UpcastError(f"{step} failed: {type(error).__name__}: {reason}") from error
            if not isinstance(result, dict):
                raise UpcastError(f"{step} returned {type(result).__name__}, not a dict")
        return result


UPCASTERS = Upcasters()
"""The upcasters of the contracts in ``dianabot_contracts.events`` (registered there, beside the models)."""
