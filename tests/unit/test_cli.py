"""The operator CLI without services: parsing, replay headers, progress records, tables, delegation."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from dianabot_core.cli import (
    H_REPLAYED_FROM,
    DeadLetter,
    PartitionProgress,
    _load_optional,
    load_kafka_settings,
    main,
    parse_position,
    render_table,
)
from dianabot_core.settings import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _letter(headers: dict[str, str], value: bytes = b"{}") -> DeadLetter:
    return DeadLetter(
        partition=2,
        offset=15,
        timestamp_ms=0,
        key=b"user:1",
        value=value,
        headers=tuple((k, v.encode()) for k, v in headers.items()),
    )


def test_positions_are_partition_colon_offset() -> None:
    assert parse_position("2:15") == (2, 15)
    for bad in ("2", "2:", ":15", "a:1", "-1:3", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected PARTITION:OFFSET"):
            parse_position(bad)


def test_a_replay_keeps_the_original_headers_and_names_the_dead_letter() -> None:
    letter = _letter(
        {
            "event_id": "e1",
            "event_type": "user.activity",
            "traceparent": "00-abc-def-01",
            "x-attempt": "2",
            "x-due-at": "1700000000000",
            "x-last-error": "TimeoutError: slow",
            "x-original-topic": "dianabot.users",
            "x-original-partition": "4",
            "x-original-offset": "99",
            "x-replayed-from": "0:1",
            "x-dlq-reason": "transient: TimeoutError (retries exhausted)",
            "x-dlq-handler": "dianabot.users.record_activity",
        }
    )

    assert letter.replay_headers() == [
        ("event_id", b"e1"),
        ("event_type", b"user.activity"),
        ("traceparent", b"00-abc-def-01"),
        (H_REPLAYED_FROM, b"2:15"),
    ]
    assert letter.source == ("dianabot.users", "4", "99")
    assert letter.handler == "dianabot.users.record_activity"


def test_the_event_is_named_from_headers_else_from_the_body() -> None:
    body = json.dumps({"event_id": "from-body", "event_type": "user.registered"}).encode()
    assert _letter({"event_id": "h", "event_type": "t"}, body).event_ref() == ("h", "t")
    assert _letter({}, body).event_ref() == ("from-body", "user.registered")
    assert _letter({}, b"\xff not json").event_ref() == (None, None)
    assert _letter({}, b"\xff not json").details()["body"] == {"hex": "ff206e6f74206a736f6e"}


def test_progress_keeps_a_watermark_and_the_offsets_replayed_above_it() -> None:
    progress = PartitionProgress.decode(10, "12,14-16")
    assert progress.replayed == {12, 14, 15, 16}
    assert [o for o in range(8, 18) if progress.is_replayed(o)] == [8, 9, 12, 14, 15, 16]

    progress.mark(10)
    assert (progress.watermark, progress.encode()) == (11, "12,14-16")
    progress.mark(11)  # 10..12 are all replayed now: the watermark passes them
    assert (progress.watermark, progress.encode()) == (13, "14-16")
    progress.settle(log_start=20)  # retention deleted everything below 20
    assert (progress.watermark, progress.encode()) == (20, "")


def test_progress_forgets_the_oldest_offsets_rather_than_outgrow_kafkas_metadata_limit() -> None:
    progress = PartitionProgress(0, set(range(1, 2000, 2)))
    encoded = progress.encode(limit=100)
    assert len(encoded) <= 100
    assert encoded.endswith(",1997,1999")
    assert PartitionProgress.decode(0, encoded).replayed <= progress.replayed


def test_tables_align_columns_and_cut_long_cells() -> None:
    rows = [{"group": "dianabot.users.register", "lag": 0}, {"group": "g", "lag": 12, "extra": "x"}]
    assert render_table(rows, ("group", "lag", "note"), {"group": 10}).splitlines() == [
        "GROUP       LAG  NOTE",
        "dianabot.…  0    -",
        "g           12   -",
    ]
    assert render_table([], ("dead_letter", "status")) == "DEAD LETTER  STATUS"


def test_kafka_settings_are_read_without_a_bot_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DIANABOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DIANABOT_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    assert load_kafka_settings().bootstrap_servers == "kafka-1:9092,kafka-2:9092"

    monkeypatch.setenv("DIANABOT_KAFKA__BOOTSTRAP_SERVERS", "kafka-1")
    with pytest.raises(ConfigError, match=r"^invalid configuration: DIANABOT_KAFKA__BOOTSTRAP_SERVERS: "):
        load_kafka_settings()


def test_core_cli_does_not_reach_up_into_the_scheduler_for_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`jobs` belong to the scheduler (`python -m schedulers`, `dianabot jobs`): dianabot_core's own command
    line neither imports it nor loads it at run time."""
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    monkeypatch.setitem(sys.modules, "schedulers.cli", types.SimpleNamespace(main=fake_main))
    assert main(["jobs", "trigger", "scheduled_daily_cleanup"]) == 2  # no such command here
    assert calls == []


def test_a_missing_optional_module_is_told_apart_from_a_broken_one() -> None:
    assert _load_optional("dianabot_core.no_such_module", "main") is None
    assert _load_optional("dianabot_core.cli", "no_such_function") is None
    assert _load_optional("dianabot_core.cli", "main") is main


def test_broadcast_progress_is_read_through_the_telegram_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    @dataclass
    class Progress:
        broadcast_id: str
        sent: int
        pending: int

        @property
        def finished(self) -> bool:
            return self.pending == 0

    async def broadcast_progress(session: object, broadcast_id: str) -> Progress | None:
        return Progress(broadcast_id, 40, 2) if broadcast_id == "b-1" else None

    fake = types.SimpleNamespace(broadcast_progress=broadcast_progress)
    monkeypatch.setitem(sys.modules, "dianabot_core.telegram.broadcasts", fake)

    assert main(["broadcast", "progress", "b-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "broadcast_id": "b-1",
        "sent": 40,
        "pending": 2,
        "finished": False,
    }
    assert main(["broadcast", "progress", "b-2"]) == 1
    assert capsys.readouterr().err == "error: no broadcast 'b-2'\n"


def test_unreachable_kafka_is_one_line_and_exit_status_1() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(DIANABOT_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", DIANABOT_KAFKA__CONNECT_TIMEOUT_S="2")
    for command in (["lag"], ["dlq", "list"]):
        result = subprocess.run(
            [sys.executable, "-m", "dianabot_core.cli", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == "error: Kafka is unreachable at 127.0.0.1:1: KafkaConnectionError\n"
