"""The `dianabot` console command: its scripts, its command tree, and shell completion."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dianabot_cli.app import app, handler_names, main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    ("dlq", "list"),
    ("dlq", "show"),
    ("dlq", "replay"),
    ("lag",),
    ("jobs", "list"),
    ("jobs", "trigger"),
    ("broadcast", "progress"),
}


def test_the_console_scripts_name_callables_that_import() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"dianabot", "dianabot-telegram-double"}
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target


def _leaves(command: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    children = getattr(command, "commands", None)
    if not children:
        return {path: command}
    found: dict[tuple[str, ...], Any] = {}
    for name, child in children.items():
        found |= _leaves(child, (*path, name))
    return found


def test_every_operator_command_is_there_and_takes_json() -> None:
    leaves = _leaves(typer.main.get_command(app))
    assert set(leaves) == COMMANDS
    without_json = [path for path, command in leaves.items() if "--json" not in _options(command)]
    assert without_json == []


def _options(command: Any) -> set[str]:
    return {option for param in command.params for option in getattr(param, "opts", ())}


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"], prog_name="dianabot")
    assert result.exit_code == 0
    for command in ("dlq", "lag", "jobs", "broadcast"):
        assert command in result.output
    result = CliRunner().invoke(app, ["broadcast", "progress", "--help"], prog_name="dianabot")
    assert "--watch" in result.output


def _complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], line: str) -> list[str]:
    """What bash completion offers for the last word of `line` (set up by `dianabot --install-completion`)."""
    words = line.split(" ")
    monkeypatch.setenv("_DIANABOT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", line)
    monkeypatch.setenv("COMP_CWORD", str(len(words) - 1))
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 0
    return capsys.readouterr().out.split()


def test_job_names_complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    offered = _complete(monkeypatch, capsys, "dianabot jobs trigger scheduled_daily_c")
    assert offered == ["scheduled_daily_cleanup"]


def test_handler_names_complete_from_the_handler_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "dianabot.users.record_activity" in handler_names()
    offered = _complete(monkeypatch, capsys, "dianabot dlq replay --all --handler dianabot.users.re")
    assert offered == sorted(n for n in handler_names() if n.startswith("dianabot.users.re"))
    assert "dianabot.users.record_activity" in offered
