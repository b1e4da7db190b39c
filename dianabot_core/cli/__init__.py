"""The operator's command line: dead letters, consumer lag, jobs and broadcasts.

    dianabot dlq list [--handler H] [--source-topic T] [--limit N]
    dianabot dlq show PARTITION:OFFSET
    dianabot dlq replay PARTITION:OFFSET [PARTITION:OFFSET ...] [--dry-run] [--allow-topic T]
    dianabot dlq replay --all [--handler H] [--source-topic T] [--dry-run] [--allow-topic T]
    dianabot lag [--group G ...] [--lagging]
    dianabot jobs list | jobs trigger NAME         (schedulers.cli)
    dianabot broadcast progress ID [--watch]       (dianabot_core.telegram.broadcasts, from PostgreSQL)

The commands are a Typer app, built here by `build_app`; the ``dianabot`` console script
(``dianabot_cli``) adds the scheduler's ``jobs`` commands and completion of handler names from the
handler registry, which this package may not import. ``python -m dianabot_core.cli`` runs the app without
``jobs`` (``dianabot jobs`` or ``python -m schedulers``).

Tables are drawn with Rich on a terminal and as aligned text otherwise; ``--json`` prints JSON
instead. Only the ``DIANABOT_KAFKA__*`` settings are read (and ``DIANABOT_DATABASE__*`` by
``broadcast``), so the tool needs no bot token. Exit status: 0 done, 1 failed (Kafka unreachable,
no such dead letter, a replay that could not be published or was refused), 2 bad usage or
settings. The dead-letter commands are in ``dianabot_core.cli.dlq``.

Replaying a dead letter publishes its original bytes, key and headers (less the pipeline's
``x-dlq-*``, ``x-original-*`` and retry headers, plus ``x-replayed-from: PARTITION:OFFSET``) to the
topic it first entered (``x-original-topic``), if that topic is in the topic registry
(``dianabot_contracts.topics``; ``--allow-topic`` names another). Every handler group on that topic sees it
again: those that handled it already drop it by their ledger, the failed one handles it now, and a
record that is still bad is dead-lettered again (a new dead letter, replayable in turn). So replays
are safe to repeat; the record of what was replayed only avoids needless ones.

One dead letter is one (handler, source topic, partition, offset); a crash in the pipeline may have
written it twice. ``dlq list`` shows each once with its number of copies, and ``replay --all``
replays each once and records its copies as replayed with it.

That record is the consumer group ``dianabot.cli.dlq-replay`` (``--progress-group``): for each
dead-letter partition its committed offset is a watermark, below which every dead letter was
replayed (or could not be, e.g. its topic is gone, which ``--all`` reports once), and the commit's
metadata lists replayed offsets above it (left by filtered ``--all`` runs and by replays by
position). ``--all`` replays only what is neither below the watermark nor listed (nor a copy of
what is); replaying by position always publishes and adds the offset to the list.
``lag --group dianabot.cli.dlq-replay`` shows how many dead letters lie past the watermark. Run one
``--all`` at a time: two at once may both replay a record (harmless, as said, but noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from dianabot_core.cli import dlq
from dianabot_core.cli.dead_letters import H_REPLAYED_FROM, DeadLetter, PartitionProgress, parse_position
from dianabot_core.cli.output import CliError, Table, count, emit, render_table
from dianabot_core.cli.runner import Invocation, execute, load_kafka_settings, namespace, run_app
from dianabot_core.db import create_engine, create_session_factory
from dianabot_core.lag import GroupLag, group_lags
from dianabot_core.settings import KafkaSettings, load_database_settings

# Names the dead-letter tools were first imported by (tests, scripts).
__all__ = [
    "H_REPLAYED_FROM",
    "CliError",
    "DeadLetter",
    "Invocation",
    "PartitionProgress",
    "build_app",
    "build_parser",
    "load_kafka_settings",
    "main",
    "parse_position",
    "render_table",
]


LAG_COLUMNS = ("group", "topic", "partition", "committed", "end", "lag")


async def cmd_lag(args: argparse.Namespace, settings: KafkaSettings) -> int:
    lags = await group_lags(settings, args.group or None)
    if args.lagging:
        lags = [lag for lag in lags if lag.lag > 0]
    rows = [dataclasses.asdict(lag) for lag in lags]
    emit(args, rows, lambda: _lag_text(lags))
    return 0


def _lag_text(lags: Sequence[GroupLag]) -> str | Table:
    if not lags:
        return "no partitions to report"
    groups = {lag.group for lag in lags}
    total = sum(lag.lag for lag in lags)
    rows = [dataclasses.asdict(lag) for lag in lags]
    return Table(rows, LAG_COLUMNS, caption=f"total lag {total} over {count(len(groups), 'group')}")


# --- delegated commands -----------------------------------------------------------------------


def _load_optional(module: str, attribute: str) -> Callable[..., Any] | None:
    """`module.attribute`, or None when that module (not one it imports) is not installed."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and (module == error.name or module.startswith(error.name + ".")):
            return None
        raise
    found: Callable[..., Any] | None = getattr(loaded, attribute, None)
    return found


async def cmd_broadcast_progress(args: argparse.Namespace, settings: KafkaSettings) -> int:
    """``dianabot_core.telegram.broadcasts.broadcast_progress(session, broadcast_id)`` read from PostgreSQL;
    with ``--watch``, again every ``--interval`` seconds until the broadcast is finished."""
    progress_of = _load_optional("dianabot_core.telegram.broadcasts", "broadcast_progress")
    if progress_of is None:
        raise CliError(
            "broadcast progress is not available here (dianabot_core.telegram.broadcasts is not installed)"
        )
    database = load_database_settings()
    engine = create_engine(database)
    sessions = create_session_factory(engine)

    async def read() -> dict[str, Any]:
        try:
            async with sessions() as session:
                progress = await progress_of(session, args.broadcast_id)
        except (OSError, SQLAlchemyError) as error:
            raise CliError(f"PostgreSQL at {database.safe_url()}: {type(error).__name__}") from None
        if progress is None:
            raise CliError(f"no broadcast {args.broadcast_id!r}")
        data = _as_mapping(progress)
        if "finished" not in data and hasattr(progress, "finished"):
            data["finished"] = bool(progress.finished)
        return data

    try:
        data = await read()
        if getattr(args, "watch", False):
            data = await _watch(args, data, read)
            if args.json:  # one JSON object per line was printed, the last one finished
                return 0
    finally:
        await engine.dispose()
    emit(args, data, lambda: Table([{"field": k, "value": v} for k, v in data.items()], ("field", "value")))
    return 0


_COUNTS = ("sent", "failed", "blocked", "unknown")


def _settled(data: Mapping[str, Any]) -> tuple[int, int | None]:
    """(messages settled, recipients): sent, failed, blocked or unknown, of the audience so far."""
    recipients = data.get("recipients")
    if not isinstance(recipients, int):
        return 0, None
    pending = data.get("pending")
    return recipients - (pending if isinstance(pending, int) else 0), recipients


def _progress_line(data: Mapping[str, Any]) -> str:
    settled, recipients = _settled(data)
    counts = ", ".join(
        f"{k} {data[k]}" for k in ("sent", "failed", "blocked", "unknown", "pending") if k in data
    )
    of = f"{settled}/{recipients} settled" if recipients is not None else "progress"
    return f"{data.get('broadcast_id', '?')}: {of} ({counts})" + (" finished" if data.get("finished") else "")


async def _watch(args: argparse.Namespace, data: dict[str, Any], read: Callable[[], Any]) -> dict[str, Any]:
    """Poll until finished: a Rich progress bar on a terminal, else a line per change (with
    ``--json`` a JSON object per line)."""
    console = args.console
    bar = None
    if console is not None:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        bar.start()
    task = None if bar is None else bar.add_task(f"broadcast {args.broadcast_id}", total=None, counts="")
    last: dict[str, Any] | None = None
    try:
        while True:
            if bar is not None and task is not None:
                settled, recipients = _settled(data)
                counts = " ".join(
                    f"{k} {data[k]}" for k in ("sent", "failed", "blocked", "unknown") if k in data
                )
                bar.update(task, completed=settled, total=recipients, counts=counts)
            elif data != last:
                print(json.dumps(data, default=str) if args.json else _progress_line(data), flush=True)
            last = data
            if data.get("finished"):
                return data
            await asyncio.sleep(args.interval)
            data = await read()
    finally:
        if bar is not None:
            bar.stop()


def _as_mapping(result: Any) -> dict[str, Any]:
    if callable(getattr(result, "as_dict", None)):
        return dict(result.as_dict())
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result)


# --- the app ----------------------------------------------------------------------------------

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
broadcast_app = typer.Typer(help="Broadcasts.", no_args_is_help=True)


def lag_command(
    ctx: typer.Context,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="Only this group (repeatable); default: dianabot.*."),
    ] = None,
    lagging: Annotated[bool, typer.Option("--lagging", help="Only partitions with lag > 0.")] = False,
    as_json: AsJson = False,
) -> Any:
    """Consumer-group lag per partition."""
    return execute(ctx, cmd_lag, namespace(as_json, group=group or [], lagging=lagging))


@broadcast_app.command("progress")
def broadcast_progress_command(
    ctx: typer.Context,
    broadcast_id: Annotated[str, typer.Argument(metavar="ID", show_default=False)],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow it (a progress bar on a terminal) until it is finished.")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between reads.")] = 2.0,
    as_json: AsJson = False,
) -> Any:
    """A broadcast's progress, from PostgreSQL (no bot token needed)."""
    args = namespace(as_json, broadcast_id=broadcast_id, watch=watch, interval=interval)
    return execute(ctx, cmd_broadcast_progress, args)


def build_app(jobs: typer.Typer | None = None) -> typer.Typer:
    """The operator app: dlq, lag, broadcast, and the scheduler's `jobs` when given."""
    app = typer.Typer(
        help="DianaBot jobs: operator tools.", no_args_is_help=True, pretty_exceptions_enable=False
    )
    app.add_typer(dlq.app, name="dlq")
    app.command("lag")(lag_command)
    if jobs is not None:  # the scheduler's, handed in by dianabot_cli (dianabot_core may not import it)
        app.add_typer(jobs, name="jobs")
    app.add_typer(broadcast_app, name="broadcast")
    return app


class _Parser:
    def parse_args(self, argv: Sequence[str]) -> argparse.Namespace:
        parsed = run_app(build_app(), argv, "python -m dianabot_core.cli", Invocation(parse_only=True))
        if not isinstance(parsed, argparse.Namespace):
            raise SystemExit(parsed)
        return parsed


def build_parser() -> _Parser:
    """``build_parser().parse_args(argv)``: a dlq, lag or broadcast command's arguments, parsed by
    the app without running them, with the coroutine to run as ``.run(args, kafka_settings)`` (for
    callers that have an event loop of their own, such as tests)."""
    return _Parser()


def main(argv: Sequence[str] | None = None, *, kafka: KafkaSettings | None = None) -> int:
    """``python -m dianabot_core.cli``: the app without the scheduler's commands built in."""
    return int(run_app(build_app(), argv, "python -m dianabot_core.cli", Invocation(kafka=kafka)))


if __name__ == "__main__":
    sys.exit(main())
