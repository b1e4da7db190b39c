"""``python -m dianabot_core.probe``, the containers' health check, against the real health server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from dianabot_core import probe
from dianabot_core.health import Check, HealthServer

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionError("connection refused by 127.0.0.1:5432")


@asynccontextmanager
async def health_server(**checks: Check) -> AsyncIterator[str]:
    server = HealthServer(free_port(), checks, host="127.0.0.1")
    await server.start()
    try:
        assert server.url is not None
        yield server.url
    finally:
        await server.stop()


async def test_ready_is_healthy() -> None:
    async with health_server(database=passing, kafka=passing) as url:
        assert await asyncio.to_thread(probe.main, [f"{url}/readyz"]) == 0


async def test_unready_is_unhealthy_and_names_the_failing_check(capsys: pytest.CaptureFixture[str]) -> None:
    async with health_server(database=failing, kafka=passing) as url:
        assert await asyncio.to_thread(probe.main, [f"{url}/readyz"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: {url}/readyz answered 503")
    assert "database" in err
    assert "connection refused" in err
    assert err.count("\n") == 1


async def test_nothing_listening_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/readyz"
    assert await asyncio.to_thread(probe.main, [url, "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith(f"unhealthy: {url} unreachable:")


def test_the_probe_process_imports_no_driver_and_defaults_to_the_consumers_readyz() -> None:
    code = (
        "import sys, dianabot_core.probe; "
        "assert not any(m.split('.')[0] in {'sqlalchemy', 'aiokafka', 'faststream', 'pydantic', 'aiohttp'} "
        "for m in sys.modules), sorted(sys.modules); print(dianabot_core.probe.DEFAULT_URL)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://127.0.0.1:9464/readyz"
