"""``dlq list | show | replay``: the operator's commands on dead letters (see ``core.cli``).

Replays go only to topics of the registry (``contracts.topics.TOPICS``): ``x-original-topic`` is
whatever header the dead letter carries, and publishing its bytes to any other topic (say, one
another service consumes) is refused unless the operator names it with ``--allow-topic``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts.topics import DEAD_LETTERS, TOPICS
from core.cli.dead_letters import (
    PROGRESS_GROUP,
    DeadLetter,
    DeadLetterTopic,
    Identity,
    PartitionProgress,
    parse_position,
)
from core.cli.output import CliError, count, emit, render_table, short_time
from core.pipeline.records import H_ORIGINAL_TOPIC
from core.settings import KafkaSettings

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

    def text() -> str:
        table_rows = [
            {**r, "failed_at": short_time(r["failed_at"]), "replayed": "yes" if r["replayed"] else "no"}
            for r in rows
        ]
        heading = f"{count(len(groups), 'dead letter')} on {args.topic}" + (
            f" (the last {len(shown)} shown)" if len(shown) < len(groups) else ""
        )
        heading += _copies_note(len(letters), len(groups))
        return heading + "\n" + render_table(table_rows, LIST_COLUMNS, LIST_WIDTHS) if rows else heading

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
    for letter in fresh:
        await replayer.replay(letter)


def _replay_text(results: Sequence[ReplayResult], args: argparse.Namespace) -> str:
    if not results:
        return "nothing to replay" + (" (every matching dead letter was replayed before)" if args.all else "")
    counts: dict[str, int] = {}
    for result in results:
        status = result.status.split(":")[0].split(" as ")[0]
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    copies = sum(len(r.duplicates) for r in results)
    table = render_table([r.row() for r in results], REPLAY_COLUMNS, {"handler": 48})
    return f"{table}\n{count(len(results), 'dead letter')} from {args.topic}: {summary}" + _copies_note(
        len(results) + copies, len(results)
    )


# --- parser -----------------------------------------------------------------------------------


def add_dlq_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    dlq_common = argparse.ArgumentParser(add_help=False, parents=[common])
    dlq_common.add_argument("--topic", default=DEAD_LETTERS.name, help="the dead-letter topic (%(default)s)")
    dlq_common.add_argument(
        "--progress-group", default=PROGRESS_GROUP, help="group recording replays (%(default)s)"
    )
    dlq = commands.add_parser("dlq", help="dead letters: list, show, replay")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    listing = sub.add_parser(
        "list", parents=[dlq_common], help="a table of dead letters (copies collapsed), oldest first"
    )
    _add_filters(listing)
    listing.add_argument(
        "--limit", type=int, default=50, help="show the last N (0: all; default %(default)s)"
    )
    listing.set_defaults(run=cmd_dlq_list)
    show = sub.add_parser("show", parents=[dlq_common], help="one dead letter's headers and body")
    show.add_argument("position", type=parse_position, metavar="PARTITION:OFFSET")
    show.set_defaults(run=cmd_dlq_show)
    replay = sub.add_parser("replay", parents=[dlq_common], help="publish dead letters to their source topic")
    replay.add_argument("positions", nargs="*", type=parse_position, metavar="PARTITION:OFFSET")
    replay.add_argument("--all", action="store_true", help="every dead letter not replayed before")
    _add_filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed, publish nothing")
    replay.add_argument(
        "--allow-topic",
        action="append",
        default=[],
        metavar="TOPIC",
        help="also replay to TOPIC, which is not in the topic registry (repeatable)",
    )
    replay.set_defaults(run=cmd_dlq_replay)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--handler", help="only dead letters of this handler (dianabot.module.action)")
    parser.add_argument("--source-topic", help="only dead letters that first entered this topic")
