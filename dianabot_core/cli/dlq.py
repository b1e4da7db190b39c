"""``dlq list | show | replay``: the operator's commands on dead letters (see ``dianabot_core.cli``).

Replays go only to topics of the registry (``dianabot_contracts.topics.TOPICS``): ``x-original-topic`` is
whatever header the dead letter carries, and publishing its bytes to any other topic (say, one
another service consumes) is refused unless the operator names it with ``--allow-topic``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from dianabot_contracts.topics import DEAD_LETTERS, TOPICS
from dianabot_core.cli.dead_letters import (
    PROGRESS_GROUP,
    DeadLetter,
    DeadLetterTopic,
    Identity,
    PartitionProgress,
    parse_position,
)
from dianabot_core.cli.output import (
    CliError,
    Table,
    View,
    count,
    emit,
    progress_bar,
    short_time,
    stderr_console,
)
from dianabot_core.cli.runner import complete_handler, execute, namespace
from dianabot_core.pipeline.records import H_ORIGINAL_TOPIC
from dianabot_core.settings import KafkaSettings

REPLAYABLE_TOPICS = frozenset(spec.name for spec in TOPICS if spec is not DEAD_LETTERS)
COMMIT_EVERY = 100

LIST_COLUMNS = (
    "dead_letter",
    "copies",
    "failed_at",
    "handler",
    "reason",
    "attempts",
    "error_type",
    "source_topic",
    "event_type",
    "event_id",
    "replayed",
)
LIST_WIDTHS = {"reason": 48, "handler": 48, "source_topic": 40}
REPLAY_COLUMNS = ("dead_letter", "copies", "handler", "event_id", "topic", "published_as", "status")


def collapse_copies(letters: Iterable[DeadLetter]) -> list[list[DeadLetter]]:
    """Dead letters grouped by identity, in the order of their first copies (each group's first)."""
    groups: dict[Identity | str, list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(letter.identity or letter.position, []).append(letter)
    return list(groups.values())


def _copies_note(letters: int, distinct: int) -> str:
    extra = letters - distinct
    return f" ({extra} more {'copy' if extra == 1 else 'copies'} of them collapsed)" if extra else ""


@dataclass
class ReplayResult:
    dead_letter: str
    handler: str | None
    event_id: str | None
    topic: str | None
    status: str
    published_as: str | None = None
    duplicates: list[str] = field(default_factory=list)  # other copies of this dead letter

    @property
    def failed(self) -> bool:
        return self.status.startswith(("failed", "refused"))

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "copies": 1 + len(self.duplicates)}


class Replayer:
    """Replays dead letters to their source topics, once per dead letter however many copies it
    has, and records each (copies too) in the progress."""

    def __init__(
        self,
        dlq: DeadLetterTopic,
        progress: dict[int, PartitionProgress],
        *,
        allowed_topics: Collection[str] = REPLAYABLE_TOPICS,
        dry_run: bool = False,
        settle_failures: bool = False,
    ) -> None:
        self.dlq = dlq
        self.progress = progress
        self.allowed_topics = allowed_topics
        self.dry_run = dry_run
        # --all records a dead letter it cannot replay too, so its next run moves past it.
        self.settle_failures = settle_failures
        self.results: list[ReplayResult] = []
        self._sources: dict[tuple[str | None, ...], str] = {}
        # Dead letters handled: this run's result, or None when replayed by an earlier run.
        self._handled: dict[Identity, ReplayResult | None] = {}
        self._unsaved = 0

    def already_replayed(self, letter: DeadLetter) -> bool:
        pp = self.progress.get(letter.partition)
        return pp is not None and pp.is_replayed(letter.offset)

    def replayed_before(self, letter: DeadLetter) -> None:
        """`letter` was replayed by an earlier run: a copy of it is not replayed again."""
        if letter.identity is not None:
            self._handled.setdefault(letter.identity, None)

    async def replay(self, letter: DeadLetter) -> ReplayResult | None:
        """Publish `letter`, or say why not; a copy of a dead letter handled already is only
        recorded (None, or added to that dead letter's result)."""
        identity = letter.identity
        if identity is not None and identity in self._handled:
            first = self._handled[identity]
            if first is not None:
                first.duplicates.append(letter.position)
            if first is None or self.settle_failures or not first.failed:
                await self._settle(letter)
            return None
        event_id, _ = letter.event_ref()
        result = ReplayResult(letter.position, letter.handler, event_id, letter.original_topic, "")
        result.status, result.published_as = await self._publish(letter)
        self.results.append(result)
        if identity is not None:
            self._handled[identity] = result
        if self.settle_failures or not result.failed:
            await self._settle(letter)
        return result

    async def _publish(self, letter: DeadLetter) -> tuple[str, str | None]:
        topic = letter.original_topic
        if topic is None:
            return f"failed: no {H_ORIGINAL_TOPIC} header", None
        if topic not in self.allowed_topics:
            return (
                f"refused: {topic} is not in the topic registry (--allow-topic {topic} replays there)",
                None,
            )
        if not self.dlq.topic_exists(topic):
            return f"failed: topic {topic} does not exist", None
        # Two handlers that dead-lettered one record: one replay reaches both again.
        first = self._sources.setdefault(letter.source, letter.position) if all(letter.source) else None
        if first not in (None, letter.position):
            return f"same record as {first}", None
        if self.dry_run:
            return "would replay", None
        return "replayed", await self.dlq.publish(letter, topic)

    async def _settle(self, letter: DeadLetter) -> None:
        if self.dry_run:
            return
        self.progress.setdefault(letter.partition, PartitionProgress(0)).mark(letter.offset)
        self._unsaved += 1
        if self._unsaved >= COMMIT_EVERY:
            await self.save()

    async def save(self) -> None:
        if self._unsaved and not self.dry_run:
            await self.dlq.save_progress(self.progress)
        self._unsaved = 0


# --- commands ---------------------------------------------------------------------------------


def _matches(letter: DeadLetter, args: argparse.Namespace) -> bool:
    return (args.handler is None or letter.handler == args.handler) and (
        args.source_topic is None or letter.original_topic == args.source_topic
    )


def _by_time(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    return sorted(letters, key=lambda d: (d.timestamp_ms, d.partition, d.offset))


async def cmd_dlq_list(args: argparse.Namespace, settings: KafkaSettings) -> int:
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        progress = await dlq.progress()
        letters = _by_time([letter async for letter in dlq.read() if _matches(letter, args)])
    groups = collapse_copies(letters)
    shown = groups[-args.limit :] if args.limit else groups
    rows = [_list_row(copies, progress) for copies in shown]

    def text() -> View:
        table_rows = [
            {**r, "failed_at": short_time(r["failed_at"]), "replayed": "yes" if r["replayed"] else "no"}
            for r in rows
        ]
        heading = f"{count(len(groups), 'dead letter')} on {args.topic}" + (
            f" (the last {len(shown)} shown)" if len(shown) < len(groups) else ""
        )
        heading += _copies_note(len(letters), len(groups))
        return Table(table_rows, LIST_COLUMNS, LIST_WIDTHS, title=heading) if rows else heading

    emit(args, rows, text)
    return 0


def _list_row(copies: Sequence[DeadLetter], progress: Mapping[int, PartitionProgress]) -> dict[str, Any]:
    """One dead letter (its first copy), with its other copies; replayed if any copy was."""

    def replayed(letter: DeadLetter) -> bool:
        pp = progress.get(letter.partition)
        return bool(pp and pp.is_replayed(letter.offset))

    first, *others = copies
    return {
        **first.summary(),
        "copies": len(copies),
        "duplicates": [letter.position for letter in others],
        "replayed": any(replayed(letter) for letter in copies),
    }


async def cmd_dlq_show(args: argparse.Namespace, settings: KafkaSettings) -> int:
    partition, offset = args.position
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        letter = await dlq.read_one(partition, offset)
        progress = await dlq.progress()
    details = letter.details()
    pp = progress.get(partition)
    details["replayed"] = bool(pp and pp.is_replayed(offset))
    emit(args, details, lambda: _show_text(details))
    return 0


def _show_text(details: Mapping[str, Any]) -> str:
    headers: Mapping[str, Any] = details["headers"]
    width = max((len(k) for k in headers), default=0)
    body = details["body"]
    lines = [
        f"dead letter {details['dead_letter']}   written {details['timestamp']}",
        f"key: {details['key']}",
        f"replayed: {'yes' if details['replayed'] else 'no'}",
        "headers:",
        *(f"  {k.ljust(width)}  {v}" for k, v in headers.items()),
        "body:",
        body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False),
    ]
    return "\n".join(lines)


async def cmd_dlq_replay(args: argparse.Namespace, settings: KafkaSettings) -> int:
    if bool(args.positions) == bool(args.all):
        raise CliError("name dead letters as PARTITION:OFFSET, or pass --all")
    if args.positions and (args.handler or args.source_topic):
        raise CliError("--handler and --source-topic filter --all only")
    async with DeadLetterTopic(settings, args.topic, args.progress_group) as dlq:
        replayer = Replayer(
            dlq,
            await dlq.progress(),
            allowed_topics=REPLAYABLE_TOPICS | set(args.allow_topic),
            dry_run=args.dry_run,
            settle_failures=args.all,
        )
        try:
            if args.all:
                await _replay_all(dlq, replayer, args)
            else:
                for partition, offset in args.positions:
                    await replayer.replay(await dlq.read_one(partition, offset))
        finally:
            await replayer.save()
    results = replayer.results
    emit(args, [r.row() for r in results], lambda: _replay_text(results, args))
    return 1 if any(r.failed for r in results) else 0


async def _replay_all(dlq: DeadLetterTopic, replayer: Replayer, args: argparse.Namespace) -> None:
    # From the log start, every partition read before anything is replayed: a copy is skipped
    # when its dead letter was replayed before, wherever and whenever that copy was written.
    letters = _by_time([letter async for letter in dlq.read() if _matches(letter, args)])
    fresh = []
    for letter in letters:
        if replayer.already_replayed(letter):
            replayer.replayed_before(letter)
        else:
            fresh.append(letter)
    with progress_bar(getattr(args, "progress_console", None), "replaying", len(fresh)) as advance:
        for letter in fresh:
            await replayer.replay(letter)
            advance()


def _replay_text(results: Sequence[ReplayResult], args: argparse.Namespace) -> View:
    if not results:
        return "nothing to replay" + (" (every matching dead letter was replayed before)" if args.all else "")
    counts: dict[str, int] = {}
    for result in results:
        status = result.status.split(":")[0].split(" as ")[0]
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    copies = sum(len(r.duplicates) for r in results)
    caption = f"{count(len(results), 'dead letter')} from {args.topic}: {summary}" + _copies_note(
        len(results) + copies, len(results)
    )
    return Table([r.row() for r in results], REPLAY_COLUMNS, {"handler": 48}, caption=caption)


# --- commands as typed ------------------------------------------------------------------------

app = typer.Typer(help="Dead letters: list, show, replay.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Topic = Annotated[str, typer.Option("--topic", help="The dead-letter topic.")]
ProgressGroup = Annotated[str, typer.Option("--progress-group", help="The consumer group recording replays.")]
Handler = Annotated[
    str | None,
    typer.Option(
        "--handler",
        help="Only dead letters of this handler (dianabot.module.action).",
        autocompletion=complete_handler,
    ),
]


def _complete_topic(incomplete: str) -> list[str]:
    return sorted(name for name in REPLAYABLE_TOPICS if name.startswith(incomplete))


SourceTopic = Annotated[
    str | None,
    typer.Option(
        "--source-topic",
        help="Only dead letters that first entered this topic.",
        autocompletion=_complete_topic,
    ),
]


def _position(text: str) -> tuple[int, int]:
    try:
        return parse_position(text)
    except argparse.ArgumentTypeError as error:
        raise typer.BadParameter(str(error), param_hint="'PARTITION:OFFSET'") from None


@app.command("list")
def list_command(
    ctx: typer.Context,
    handler: Handler = None,
    source_topic: SourceTopic = None,
    limit: Annotated[int, typer.Option("--limit", help="Show the last N (0: all).")] = 50,
    topic: Topic = DEAD_LETTERS.name,
    progress_group: ProgressGroup = PROGRESS_GROUP,
    as_json: AsJson = False,
) -> Any:
    """A table of dead letters (copies collapsed), oldest first."""
    args = namespace(
        as_json,
        handler=handler,
        source_topic=source_topic,
        limit=limit,
        topic=topic,
        progress_group=progress_group,
    )
    return execute(ctx, cmd_dlq_list, args)


@app.command("show")
def show_command(
    ctx: typer.Context,
    position: Annotated[str, typer.Argument(metavar="PARTITION:OFFSET", show_default=False)],
    topic: Topic = DEAD_LETTERS.name,
    progress_group: ProgressGroup = PROGRESS_GROUP,
    as_json: AsJson = False,
) -> Any:
    """One dead letter's headers and body."""
    args = namespace(as_json, position=_position(position), topic=topic, progress_group=progress_group)
    return execute(ctx, cmd_dlq_show, args)


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    positions: Annotated[
        list[str] | None, typer.Argument(metavar="[PARTITION:OFFSET]...", show_default=False)
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead letter not replayed before.")] = False,
    handler: Handler = None,
    source_topic: SourceTopic = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be replayed, publish nothing.")
    ] = False,
    allow_topic: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-topic",
            metavar="TOPIC",
            help="Also replay to TOPIC, which is not in the topic registry (repeatable).",
        ),
    ] = None,
    topic: Topic = DEAD_LETTERS.name,
    progress_group: ProgressGroup = PROGRESS_GROUP,
    as_json: AsJson = False,
) -> Any:
    """Publish dead letters to their source topic: those named, or --all (with a progress bar)."""
    args = namespace(
        as_json,
        positions=[_position(p) for p in positions or ()],
        all=replay_all,
        handler=handler,
        source_topic=source_topic,
        dry_run=dry_run,
        allow_topic=allow_topic or [],
        topic=topic,
        progress_group=progress_group,
        progress_console=stderr_console(),
    )
    return execute(ctx, cmd_dlq_replay, args)
