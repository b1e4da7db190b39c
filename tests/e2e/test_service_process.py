"""The service as operators run it: `faststream run consumers.app:app` and the scheduler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_BOOTSTRAP, TEST_DATABASE_URL

ROOT = Path(__file__).resolve().parents[2]
FASTSTREAM = str(Path(sys.executable).with_name("faststream"))


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(
        DIANABOT_KAFKA__BOOTSTRAP_SERVERS=TEST_BOOTSTRAP,
        DIANABOT_DATABASE__URL=TEST_DATABASE_URL,
        DIANABOT_TELEGRAM__BOT_TOKEN="123456:e2e-secret-token",
        DIANABOT_TELEGRAM__API_BASE_URL="http://127.0.0.1:8081",
        DIANABOT_TELEGRAM__ADMIN_CHAT_ID="-1001",
        DIANABOT_KAFKA__CONNECT_TIMEOUT_S="3",
        DIANABOT_TELEMETRY__HTTP_PORT="0",
        DIANABOT_SCHEDULER__HTTP_PORT="0",
    )
    env.update(overrides)
    return env


def _start(target: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FASTSTREAM, "run", target],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], marker: str, within: float = 60) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    process.kill()
    raise AssertionError(f"{marker!r} not logged; output:\n{''.join(lines)}")


@pytest.mark.parametrize(
    ("target", "ready"), [("consumers.app:app", "consumers ready"), ("schedulers.app:app", "scheduler ready")]
)
def test_starts_logs_ready_and_stops_cleanly_on_sigterm(target: str, ready: str) -> None:
    process = _start(target)
    lines = _read_until(process, ready)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "e2e-secret-token" not in output


def test_unreachable_kafka_exits_with_one_line_naming_the_address() -> None:
    process = _start("consumers.app:app", DIANABOT_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == ["startup failed: Kafka is unreachable at 127.0.0.1:1: KafkaConnectionError"], output


def test_bad_configuration_exits_with_one_line_naming_the_setting() -> None:
    process = _start("consumers.app:app", DIANABOT_TELEGRAM__BOT_TOKEN="not-a-token-at-all")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    expected = "invalid configuration: DIANABOT_TELEGRAM__BOT_TOKEN: Value error, expected the form"
    assert output.strip().splitlines() == [f"{expected} <bot id>:<secret>"]
