"""What the operator CLI prints: one-line errors, aligned tables, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


def _cell(value: object, width: int | None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def render_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str], widths: Mapping[str, int] | None = None
) -> str:
    """Rows as left-aligned columns under upper-case headings; long cells are cut to `widths`."""
    cells = [[_cell(row.get(c), (widths or {}).get(c)) for c in columns] for row in rows]
    titles = [c.upper().replace("_", " ") for c in columns]
    sizes = [max([len(t), *(len(r[i]) for r in cells)]) for i, t in enumerate(titles)]
    lines = [titles, *cells]
    return "\n".join("  ".join(v.ljust(sizes[i]) for i, v in enumerate(line)).rstrip() for line in lines)


def count(n: int, noun: str) -> str:
    """``count(1, "group")`` -> ``1 group``; ``count(2, "group")`` -> ``2 groups``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def short_time(iso: str | None) -> str | None:
    """``2025-05-01T09:00:03.123+00:00`` -> ``2025-05-01 09:00:03`` (UTC) for tables."""
    try:
        return datetime.fromisoformat(iso or "").astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def emit(args: argparse.Namespace, data: object, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False) if args.json else text())
