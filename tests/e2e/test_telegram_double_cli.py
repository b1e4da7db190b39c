"""The Bot API double as demos and benchmarks run it: `python -m dianabot_double`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramRetryAfter

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cli-double-secret"
TOKEN = f"654321:{SECRET}"


async def test_cli_serves_aiogram_enforces_limits_and_never_logs_the_token() -> None:
    env = {**os.environ, "TELEGRAM_DOUBLE_TOKEN": TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dianabot_double",
        "--port",
        "0",
        "--log-level",
        "DEBUG",  # one log line per request: the lines that could leak the token
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        while not output or "listening on" not in output[-1]:
            line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
            assert line, f"the double exited early:\n{''.join(output)}"
            output.append(line)
        url = output[-1].split("listening on ")[1].strip()

        bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(url)))
        try:
            assert (await bot.get_me()).id == 654321
            await bot.send_message(7, "hello from the CLI test")
            with pytest.raises(TelegramRetryAfter):
                await bot.send_message(7, "too soon")
        finally:
            await bot.session.close()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/_double/stats") as response:
            stats = await response.json()
        assert stats["violations"]["chat"] == 1
        assert stats["delivered"] == 1
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(process.communicate(), 20)
    output.append(rest.decode())
    assert process.returncode == 0, "".join(output)
    logged = "".join(output)
    assert "sendMessage chat=7 -> 429 rate_limited" in logged
    assert SECRET not in logged
