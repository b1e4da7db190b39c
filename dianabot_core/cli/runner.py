"""Running the operator CLI's Typer commands: settings, the event loop, errors as one line.

Each command gathers its options into an ``argparse.Namespace`` (a plain bag of attributes) and
hands it, with the coroutine that does the work, to `execute`. What a run may be given from
outside is an `Invocation`, the Click context's ``obj``: the Kafka settings (else read from the
environment), a source of handler names for shell completion, or ``parse_only`` (return the
Namespace, with the coroutine as its ``run``, instead of running it: ``dianabot_core.cli.build_parser``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError

# Typer carries its own copy of Click (typer._click): its errors are these classes, not click's.
from typer._click.exceptions import ClickException

from dianabot_core.cli.output import CliError, stdout_console
from dianabot_core.settings import ConfigError, KafkaSettings, load_section

Command = Callable[[argparse.Namespace, KafkaSettings], Awaitable[int]]


def load_kafka_settings() -> KafkaSettings:
    """Just the Kafka section of the settings tree: an operator's shell needs no bot token or database URL."""
    return load_section(KafkaSettings)


def _no_names() -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class Invocation:
    """What a run of the CLI is given besides its arguments (the Click context's ``obj``)."""

    kafka: KafkaSettings | None = None
    parse_only: bool = False
    handler_names: Callable[[], Iterable[str]] = _no_names


def invocation(ctx: typer.Context) -> Invocation:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Invocation) else Invocation()


def namespace(as_json: bool, **values: Any) -> argparse.Namespace:
    """A command's arguments; ``console`` is where tables are drawn (None: plain text or JSON)."""
    return argparse.Namespace(json=as_json, console=None if as_json else stdout_console(), **values)


def complete_handler(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of ``--handler``: the names of the handler registry (if the app has one)."""
    return sorted(name for name in invocation(ctx).handler_names() if name.startswith(incomplete))


def execute(ctx: typer.Context, command: Command, args: argparse.Namespace) -> Any:
    """Run `command` with `args` in a new event loop, or only return `args` when parsing."""
    args.run = command
    given = invocation(ctx)
    if given.parse_only:
        return args
    try:
        settings = given.kafka or load_kafka_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    # aiokafka logs every failed connection attempt; the one-line error says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(run(command, args, settings))


async def run(command: Command, args: argparse.Namespace, settings: KafkaSettings) -> int:
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


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str, obj: Any = None) -> Any:
    """Run `app` on `argv` (default: the process's arguments) and return what its command
    returned: an exit status, or with ``obj.parse_only`` the parsed arguments. Usage errors are
    Click's message on standard error and exit status 2; shell completion requests are answered
    here too (``_DIANABOT_COMPLETE``, see ``dianabot --install-completion``)."""
    command = typer.main.get_command(app)
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(arguments, prog_name=prog_name, standalone_mode=False, obj=obj)
    except ClickException as error:
        error.show()
        return error.exit_code
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    return 0 if result is None else result
