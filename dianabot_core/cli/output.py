"""What the operator CLI prints: one-line errors, tables, or JSON with ``--json``.

A table is drawn with Rich when standard output is a terminal, and as plain aligned columns
otherwise (piped into ``grep`` or a file, where box drawing and wrapping to the terminal's width
would only be in the way); ``--json`` is for programs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


def _cell(value: object, width: int | None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _title(column: str) -> str:
    return column.upper().replace("_", " ")


def render_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    widths: Mapping[str, int] | None = None,
    titles: Mapping[str, str] | None = None,
) -> str:
    """Rows as left-aligned columns under upper-case headings; long cells are cut to `widths`."""
    cells = [[_cell(row.get(c), (widths or {}).get(c)) for c in columns] for row in rows]
    heads = [(titles or {}).get(c) or _title(c) for c in columns]
    sizes = [max([len(t), *(len(r[i]) for r in cells)]) for i, t in enumerate(heads)]
    lines = [heads, *cells]
    return "\n".join("  ".join(v.ljust(sizes[i]) for i, v in enumerate(line)).rstrip() for line in lines)


@dataclass(frozen=True)
class Table:
    """A table with an optional line above (`title`) and below (`caption`), printable either way."""

    rows: Sequence[Mapping[str, object]]
    columns: Sequence[str]
    widths: Mapping[str, int] = field(default_factory=dict)
    title: str | None = None
    caption: str | None = None
    titles: Mapping[str, str] = field(default_factory=dict)  # headings other than COLUMN NAME

    def text(self) -> str:
        table = render_table(self.rows, self.columns, self.widths, self.titles)
        return "\n".join(part for part in (self.title, table, self.caption) if part is not None)

    def rich(self) -> RichTable:
        table = RichTable(
            title=self.title, caption=self.caption, title_justify="left", caption_justify="left"
        )
        for column in self.columns:
            table.add_column(self.titles.get(column) or _title(column), overflow="fold")
        for row in self.rows:
            table.add_row(*(_cell(row.get(c), self.widths.get(c)) for c in self.columns))
        return table


View = str | Table


def count(n: int, noun: str) -> str:
    """``count(1, "group")`` -> ``1 group``; ``count(2, "group")`` -> ``2 groups``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def short_time(iso: str | None) -> str | None:
    """``2025-05-01T09:00:03.123+00:00`` -> ``2025-05-01 09:00:03`` (UTC) for tables."""
    try:
        return datetime.fromisoformat(iso or "").astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def stdout_console() -> Console | None:
    """A Rich console on standard output if that is a terminal, else None (plain text)."""
    console = Console(highlight=False)
    return console if console.is_terminal else None


def stderr_console() -> Console | None:
    """A Rich console on standard error if that is a terminal (for progress bars), else None."""
    console = Console(stderr=True, highlight=False)
    return console if console.is_terminal else None


def emit(args: argparse.Namespace, data: object, view: Callable[[], View]) -> None:
    """`data` as JSON with ``--json``; else `view()`, a table drawn by Rich on a terminal."""
    if args.json:
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        return
    shown = view()
    console: Console | None = getattr(args, "console", None)
    if isinstance(shown, Table):
        if console is not None:
            console.print(shown.rich())
            return
        shown = shown.text()
    print(shown)


@contextlib.contextmanager
def progress_bar(console: Console | None, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A Rich progress bar on `console` (none without one); yields the function advancing it by one."""
    if console is None or total == 0:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
