"""The operator's command line: dead letters, consumer lag, jobs and broadcasts.

    python -m core.cli dlq list [--handler H] [--source-topic T] [--limit N]
    python -m core.cli dlq show PARTITION:OFFSET
    python -m core.cli dlq replay PARTITION:OFFSET [PARTITION:OFFSET ...] [--dry-run] [--allow-topic T]
    python -m core.cli dlq replay --all [--handler H] [--source-topic T] [--dry-run] [--allow-topic T]
    python -m core.cli lag [--group G ...] [--lagging]
    python -m core.cli jobs list | jobs trigger NAME          (delegated to schedulers.cli)
    python -m core.cli broadcast progress ID                  (core.telegram.broadcasts, from PostgreSQL)

Output is an aligned text table; ``--json`` prints JSON instead. Only the ``DIANABOT_KAFKA__*``
settings are read (and ``DIANABOT_DATABASE__*`` by ``broadcast``), so the tool needs no bot token.
Exit status: 0 done, 1 failed (Kafka unreachable, no such dead letter, a replay that could not be
published or was refused), 2 bad usage or settings. The dead-letter commands are in ``core.cli.dlq``.

Replaying a dead letter publishes its original bytes, key and headers (less the pipeline's
``x-dlq-*``, ``x-original-*`` and retry headers, plus ``x-replayed-from: PARTITION:OFFSET``) to the
topic it first entered (``x-original-topic``), if that topic is in the topic registry
(``contracts.topics``; ``--allow-topic`` names another). Every handler group on that topic sees it
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
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from core.cli.dead_letters import H_REPLAYED_FROM, DeadLetter, PartitionProgress, parse_position
from core.cli.dlq import add_dlq_commands
from core.cli.output import CliError, count, emit, render_table
from core.db import create_engine, create_session_factory
from core.lag import GroupLag, group_lags
from core.settings import ConfigError, KafkaSettings, load_database_settings, load_section

# Names the dead-letter tools were first imported by (tests, scripts).
__all__ = [
    "H_REPLAYED_FROM",
    "CliError",
    "DeadLetter",
    "PartitionProgress",
    "build_parser",
    "load_kafka_settings",
    "main",
    "parse_position",
    "render_table",
]


# --- settings ---------------------------------------------------------------------------------


def load_kafka_settings() -> KafkaSettings:
    """Just the Kafka section: an operator's shell needs no bot token or database URL."""
    return load_section(KafkaSettings)


LAG_COLUMNS = ("group", "topic", "partition", "committed", "end", "lag")


async def cmd_lag(args: argparse.Namespace, settings: KafkaSettings) -> int:
    lags = await group_lags(settings, args.group or None)
    if args.lagging:
        lags = [lag for lag in lags if lag.lag > 0]
    rows = [dataclasses.asdict(lag) for lag in lags]
    emit(args, rows, lambda: _lag_text(lags))
    return 0


def _lag_text(lags: Sequence[GroupLag]) -> str:
    if not lags:
        return "no partitions to report"
    groups = {lag.group for lag in lags}
    total = sum(lag.lag for lag in lags)
    rows = [dataclasses.asdict(lag) for lag in lags]
    return render_table(rows, LAG_COLUMNS) + f"\ntotal lag {total} over {count(len(groups), 'group')}"


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


def run_jobs(argv: Sequence[str]) -> int:
    """``jobs ...`` is the scheduler's own CLI: ``schedulers.cli.main(argv)``."""
    main_ = _load_optional("schedulers.cli", "main")
    if main_ is None:
        print("jobs: not available here (schedulers.cli is not installed)", file=sys.stderr)
        return 1
    return int(main_(list(argv)) or 0)


async def cmd_broadcast_progress(args: argparse.Namespace, settings: KafkaSettings) -> int:
    """``core.telegram.broadcasts.broadcast_progress(session, broadcast_id)`` read from PostgreSQL."""
    progress_of = _load_optional("core.telegram.broadcasts", "broadcast_progress")
    if progress_of is None:
        raise CliError("broadcast progress is not available here (core.telegram.broadcasts is not installed)")
    database = load_database_settings()
    engine = create_engine(database)
    try:
        async with create_session_factory(engine)() as session:
            progress = await progress_of(session, args.broadcast_id)
    except (OSError, SQLAlchemyError) as error:
        raise CliError(f"PostgreSQL at {database.safe_url()}: {type(error).__name__}") from None
    finally:
        await engine.dispose()
    if progress is None:
        raise CliError(f"no broadcast {args.broadcast_id!r}")
    data = _as_mapping(progress)
    if "finished" not in data and hasattr(progress, "finished"):
        data["finished"] = bool(progress.finished)
    emit(
        args,
        data,
        lambda: render_table([{"field": k, "value": v} for k, v in data.items()], ("field", "value")),
    )
    return 0


def _as_mapping(result: Any) -> dict[str, Any]:
    if callable(getattr(result, "as_dict", None)):
        return dict(result.as_dict())
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result)


# --- parser and entry point -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.cli", description="DianaBot jobs: operator tools.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_dlq_commands(commands, common)
    lag = commands.add_parser("lag", parents=[common], help="consumer-group lag per partition")
    lag.add_argument("--group", action="append", help="only this group (repeatable); default: dianabot.*")
    lag.add_argument("--lagging", action="store_true", help="only partitions with lag > 0")
    lag.set_defaults(run=cmd_lag)
    jobs = commands.add_parser("jobs", help="scheduled jobs: jobs list | jobs trigger NAME (schedulers.cli)")
    jobs.add_argument("args", nargs=argparse.REMAINDER, help="list | trigger NAME")
    broadcast = commands.add_parser("broadcast", help="broadcasts")
    broadcast_commands = broadcast.add_subparsers(dest="broadcast_command", required=True, metavar="COMMAND")
    progress = broadcast_commands.add_parser("progress", parents=[common], help="a broadcast's progress")
    progress.add_argument("broadcast_id", metavar="ID")
    progress.set_defaults(run=cmd_broadcast_progress)
    return parser


async def _run(
    command: Callable[[argparse.Namespace, KafkaSettings], Awaitable[int]],
    args: argparse.Namespace,
    settings: KafkaSettings,
) -> int:
    try:
        return await command(args, settings)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except (KafkaConnectionError, OSError) as error:
        print(
            f"error: Kafka is unreachable at {settings.bootstrap_servers}: {type(error).__name__}",
            file=sys.stderr,
        )
    except KafkaError as error:
        print(f"error: Kafka at {settings.bootstrap_servers} refused: {error}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["jobs"]:  # its options are the scheduler CLI's, not ours
        return run_jobs(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        settings = load_kafka_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    # aiokafka logs every failed connection attempt; the one-line error says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_run(args.run, args, settings))


if __name__ == "__main__":
    sys.exit(main())
