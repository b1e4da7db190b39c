"""The operator CLI as a Typer app: Rich tables and progress bars, --watch, usage errors, settings."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from rich.console import Console

from dianabot_core.cli import build_parser, main
from dianabot_core.cli.dead_letters import DeadLetter
from dianabot_core.cli.dlq import _replay_all, cmd_dlq_list
from dianabot_core.cli.output import Table, emit, progress_bar
from dianabot_core.settings import ConfigError, load_tool_settings
from schedulers.cli import complete_job


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, force_terminal=True, color_system=None), out


def _no_dianabot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DIANABOT_"):
            monkeypatch.delenv(name)


def test_a_table_is_drawn_by_rich_on_a_terminal_and_aligned_text_otherwise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = Table([{"group": "dianabot.users.register", "lag": 3}], ("group", "lag"), caption="total lag 3")
    console, out = _terminal()
    emit(argparse.Namespace(json=False, console=console), [], lambda: table)
    drawn = out.getvalue()
    assert "┃ GROUP" in drawn
    assert "│ dianabot.users.register │ 3   │" in drawn
    assert drawn.rstrip().endswith("total lag 3")

    emit(argparse.Namespace(json=False, console=None), [], lambda: table)
    assert capsys.readouterr().out.splitlines() == [
        "GROUP                    LAG",
        "dianabot.users.register  3",
        "total lag 3",
    ]
    emit(argparse.Namespace(json=True, console=console), {"lag": 3}, lambda: table)
    assert json.loads(capsys.readouterr().out) == {"lag": 3}


def _letter(offset: int) -> DeadLetter:
    return DeadLetter(0, offset, offset, None, b"{}", (("x-dlq-handler", b"dianabot.users.register"),))


class _FakeTopic:
    async def read(self) -> AsyncIterator[DeadLetter]:
        for offset in range(3):
            yield _letter(offset)


class _FakeReplayer:
    def __init__(self) -> None:
        self.replayed: list[int] = []

    def already_replayed(self, letter: DeadLetter) -> bool:
        return False

    async def replay(self, letter: DeadLetter) -> None:
        self.replayed.append(letter.offset)


async def test_replay_all_shows_a_progress_bar_on_a_terminal() -> None:
    console, out = _terminal()
    replayer = _FakeReplayer()
    args = argparse.Namespace(handler=None, source_topic=None, progress_console=console)
    await _replay_all(cast(Any, _FakeTopic()), cast(Any, replayer), args)
    assert replayer.replayed == [0, 1, 2]
    assert "replaying" in out.getvalue()
    assert "3/3" in out.getvalue()

    with progress_bar(None, "replaying", 3) as advance:  # no terminal: no bar, nothing printed
        advance()


def _fake_broadcasts(monkeypatch: pytest.MonkeyPatch, pending: list[int]) -> None:
    @dataclass
    class Progress:
        broadcast_id: str
        recipients: int
        sent: int
        pending: int

        @property
        def finished(self) -> bool:
            return self.pending == 0

    async def broadcast_progress(session: object, broadcast_id: str) -> Progress:
        left = pending.pop(0) if len(pending) > 1 else pending[0]
        return Progress(broadcast_id, 3, 3 - left, left)

    monkeypatch.setitem(
        sys.modules,
        "dianabot_core.telegram.broadcasts",
        types.SimpleNamespace(broadcast_progress=broadcast_progress),
    )


def test_broadcast_progress_watch_reads_until_the_broadcast_is_finished(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_broadcasts(monkeypatch, [2, 2, 1, 0])
    assert main(["broadcast", "progress", "b-1", "--watch", "--interval", "0.1", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["pending"] for line in lines] == [2, 1, 0]  # one line per change
    assert lines[-1]["finished"] is True

    _fake_broadcasts(monkeypatch, [1, 0])
    assert main(["broadcast", "progress", "b-1", "--watch", "--interval", "0.1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "b-1: 2/3 settled (sent 2, pending 1)",
        "b-1: 3/3 settled (sent 3, pending 0) finished",
    ]
    assert out[2].split() == ["FIELD", "VALUE"]


def test_a_usage_error_is_one_click_message_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "show", "zero"]) == 2
    err = capsys.readouterr().err
    assert (
        "Error: Invalid value for 'PARTITION:OFFSET': expected PARTITION:OFFSET, e.g. 0:42, got 'zero'" in err
    )
    assert main(["dlq", "list", "--no-such-option"]) == 2
    assert main(["--help"]) == 0


def test_arguments_parse_without_running_for_callers_with_their_own_event_loop() -> None:
    args = build_parser().parse_args(["dlq", "list", "--handler", "dianabot.users.register", "--limit", "0"])
    assert args.run is cmd_dlq_list
    assert (args.handler, args.limit, args.json, args.topic) == (
        "dianabot.users.register",
        0,
        False,
        "dianabot.dead_letters",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "show", "zero"])


def test_job_names_complete_from_the_job_table() -> None:
    assert complete_job("scheduled_daily_c") == ["scheduled_daily_cleanup"]
    assert "scheduled_minutely_post_publishing" in complete_job("")


def test_the_jobs_commands_read_settings_without_a_bot_token(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_dianabot_env(monkeypatch)
    monkeypatch.setenv("DIANABOT_TIMEZONE", "UTC")
    monkeypatch.setenv("DIANABOT_TELEGRAM__ADMIN_CHAT_ID", "-1")  # other sections' variables are fine
    assert load_tool_settings().tz.key == "UTC"
    monkeypatch.setenv("DIANABOT_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigError, match=r"^invalid configuration: DIANABOT_TIMEZONE: "):
        load_tool_settings()
