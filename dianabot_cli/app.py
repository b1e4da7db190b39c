"""The ``dianabot`` console command: every operator command in one Typer app.

    dianabot dlq list|show|replay ...     dead letters (dianabot_core.cli.dlq)
    dianabot lag ...                      consumer-group lag (dianabot_core.cli)
    dianabot jobs list|trigger JOB ...    scheduled jobs (schedulers.cli)
    dianabot broadcast progress ID [--watch]
    dianabot --install-completion         job names and handler names complete in the shell

``python -m dianabot_core.cli`` and ``python -m schedulers`` run the same commands (the latter only the
``jobs`` ones). No command reads a setting it does not use: none needs a bot token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dianabot_core.cli import Invocation, build_app
from dianabot_core.cli.runner import run_app
from schedulers.cli import app as jobs_app

PROG = "dianabot"


def handler_names() -> Iterable[str]:
    """Every handler of the registry (imported only when a shell asks for completions)."""
    from consumers.registry import HANDLER_GROUPS

    return [spec.name for group in HANDLER_GROUPS for spec in group.specs]


app = build_app(jobs=jobs_app)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry point; returns the exit status."""
    return int(run_app(app, argv, PROG, Invocation(handler_names=handler_names)))
