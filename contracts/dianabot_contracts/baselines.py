"""The published payload shapes, one per event type and ``schema_version``, and the check against them.

    python -m dianabot_contracts.baselines --out docs/schemas           # `make schemas`
    python -m dianabot_contracts.baselines --out docs/schemas --check   # exit 1 when stale or incompatible

``--out`` gets what ``python -m dianabot_contracts.schema --out`` writes (each event's schema, the
envelope's, ``index.json``) and, per event type, ``<event_type>/v<N>.json``: the payload's JSON
Schema as version N was last published. The current version's file follows the code as long as
the change is compatible (``dianabot_contracts.compat``); a change that breaks producers of it is refused.
Older versions' files are never rewritten: producers of them may still be running, and each needs
a chain of upcasters (``dianabot_contracts.upcasters``) to the current version. Pure pydantic.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dianabot_contracts.compat import breaking_changes
from dianabot_contracts.envelope import EventPayload
from dianabot_contracts.events import ALL_EVENTS
from dianabot_contracts.schema import JSON_SCHEMA_DIALECT, build_files, dumps
from dianabot_contracts.upcasters import UPCASTERS, Upcasters

Published = Mapping[str, Mapping[int, Mapping[str, Any]]]
"""Event type -> version -> the payload schema published for it."""

_BASELINE = re.compile(r"v([1-9][0-9]{0,5})\.json")
HOW_TO = "docs/README.md, 'Evolving a contract'"


def baseline_file(event_type: str, version: int) -> str:
    return f"{event_type}/v{version}.json"


def payload_schema(payload_type: type[EventPayload]) -> dict[str, Any]:
    """The payload's JSON Schema (draft 2020-12) at its current version, as a baseline records it."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": baseline_file(payload_type.event_type, payload_type.schema_version),
        **payload_type.model_json_schema(),
    }


def read(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """The baselines under `out`: every ``<event_type>/v<N>.json``."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(out.glob("*/v*.json")):
        if match := _BASELINE.fullmatch(path.name):
            found.setdefault(path.parent.name, {})[int(match[1])] = json.loads(
                path.read_text(encoding="utf-8")
            )
    return found


def _version_attribute(payload_type: type[EventPayload]) -> str:
    return f"{payload_type.__name__}.schema_version"


def _breaks(event_type: str, payload_type: type[EventPayload], published: Mapping[str, Any]) -> list[str]:
    version = payload_type.schema_version
    found = breaking_changes(published, payload_schema(payload_type))
    if not found:
        return []
    return [
        f"{event_type}: the payload breaks producers of schema_version {version} "
        f"({baseline_file(event_type, version)}):",
        *(f"  {b}" for b in found),
        f"  raise {_version_attribute(payload_type)} to {version + 1} and register an upcaster "
        f"from v{version} ({HOW_TO})",
    ]


def problems(
    published: Published, events: Iterable[type[EventPayload]] = ALL_EVENTS, upcasters: Upcasters = UPCASTERS
) -> list[str]:
    """Every way the code fails producers of a published version; empty when it reads them all."""
    found: list[str] = []
    known = {e.event_type: e for e in events}
    for event_type, payload_type in known.items():
        current = payload_type.schema_version
        for version, schema in sorted(published.get(event_type, {}).items()):
            if version == current:
                found += _breaks(event_type, payload_type, schema)
            elif version > current:
                found.append(
                    f"{event_type}: v{version} is published but {_version_attribute(payload_type)} "
                    f"is {current} (a version is never lowered)"
                )
            elif missing := upcasters.missing(event_type, version, current):
                found.append(
                    f"{event_type}: v{version} is published but no upcaster leads from it to v{current}: "
                    f"register one from v{missing[0]} ({HOW_TO})"
                )
    for event_type in sorted(set(published) - set(known)):
        found.append(
            f"{event_type}: published ({', '.join(f'v{v}' for v in sorted(published[event_type]))}) but no "
            "contract has this event type any more, so its producers' records would be malformed"
        )
    return found


def generated() -> dict[str, dict[str, Any]]:
    """File name under ``--out`` -> its document: the schemas and the current versions' baselines."""
    files = build_files()
    for payload_type in ALL_EVENTS:
        files[baseline_file(payload_type.event_type, payload_type.schema_version)] = payload_schema(
            payload_type
        )
    return files


def stale(out: Path) -> list[str]:
    """The files under `out` that differ from `generated()`, are missing, or are no longer generated."""
    files = generated()
    found = []
    for name, document in files.items():
        path = out / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif path.read_text(encoding="utf-8") != dumps(document):
            found.append(f"{name} is out of date")
    found += [f"{p.name} is no longer generated" for p in sorted(out.glob("*.json")) if p.name not in files]
    return found


def write_baselines(
    out: Path, events: Iterable[type[EventPayload]] = ALL_EVENTS, upcasters: Upcasters = UPCASTERS
) -> list[str]:
    """Record each event's current payload schema as its version's baseline, unless that breaks
    producers of the baseline already there; returns `problems` with the baselines on disk."""
    events = tuple(events)
    for payload_type in events:
        path = out / baseline_file(payload_type.event_type, payload_type.schema_version)
        current = payload_schema(payload_type)
        if path.is_file() and breaking_changes(json.loads(path.read_text(encoding="utf-8")), current):
            continue  # kept: `problems` names the break
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(current), encoding="utf-8")
    return problems(read(out), events, upcasters)


def write(out: Path) -> list[str]:
    """Everything `generated()` lists (a refused baseline kept as it was); returns `problems`."""
    out.mkdir(parents=True, exist_ok=True)
    files = build_files()
    for name, document in files.items():
        (out / name).write_text(dumps(document), encoding="utf-8")
    for path in out.glob("*.schema.json"):
        if path.name not in files:  # an event type that is gone: its baselines stay
            path.unlink()
    return write_baselines(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dianabot_contracts.baselines",
        description="Write the contracts' JSON Schemas and versioned payload baselines, or check them.",
    )
    parser.add_argument("--out", type=Path, required=True, help="the schemas' directory (docs/schemas)")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if --out is stale or the code breaks it"
    )
    args = parser.parse_args(argv)
    if args.check:
        outdated = [f"{args.out}/{line} (run `make schemas`)" for line in stale(args.out)]
        if found := outdated + problems(read(args.out)):
            print("\n".join(found), file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    if found := write(args.out):
        print("\n".join(found), file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
