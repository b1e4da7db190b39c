"""The run's own database: created empty, migrated to head, filled with the bot's side of the world.

A fresh database per run makes every run start from the same state (no send ledger, ledger or
scheduler state left by an earlier one), whatever the seed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from bench.chaos.workload import BASE, MISSION_PERIOD, Fixtures
from dianabot_core.models import (
    Balance,
    Mission,
    MissionType,
    Subscription,
    SubscriptionPlan,
    User,
    UserMission,
)

CHUNK = 5000


def database_url(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def recreate(url: str, name: str) -> str:
    """Drop and create database `name` on the server of `url` (the role needs CREATEDB)."""
    engine = create_async_engine(database_url(url, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return database_url(url, name)


async def migrate(url: str, source: Path) -> None:
    """``alembic upgrade head`` with the source tree's migrations."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIANABOT_")}
    env.update(DIANABOT_DATABASE__URL=url, PYTHONPATH=str(source))
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("alembic")),
        "upgrade",
        "head",
        cwd=source,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed: {output.decode()[-2000:]}")


async def load_fixtures(url: str, fixtures: Fixtures) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for start in range(0, len(fixtures.users), CHUNK):
                ids = fixtures.users[start : start + CHUNK]
                await connection.execute(
                    insert(User), [{"id": u, "telegram_id": u, "language_code": "es"} for u in ids]
                )
                await connection.execute(insert(Balance), [{"user_id": u} for u in ids])
            await _missions(connection, fixtures)
            await _subscriptions(connection, fixtures)
    finally:
        await engine.dispose()


async def _missions(connection: AsyncConnection, fixtures: Fixtures) -> None:
    if not fixtures.missions:
        return
    rows = [
        # Inactive: the real assignment job must not hand them to the run's active users.
        {
            "id": i,
            "key": key,
            "title": f"Chaos {i}",
            "mission_type": MissionType.DAILY,
            "rewards": {"besitos": b},
            "is_active": False,
        }
        for i, key, b in fixtures.missions
    ]
    await connection.execute(insert(Mission), rows)
    assigned = [
        {
            "user_id": u,
            "mission_id": m,
            "period_start": MISSION_PERIOD,
            "expires_at": BASE + timedelta(days=3650),
        }
        for u, m in fixtures.user_missions
    ]
    for start in range(0, len(assigned), CHUNK):
        await connection.execute(insert(UserMission), assigned[start : start + CHUNK])


async def _subscriptions(connection: AsyncConnection, fixtures: Fixtures) -> None:
    rows = [
        {"id": sid, "user_id": user, "plan": SubscriptionPlan.MONTHLY, "start_at": BASE, "end_at": end_at}
        for sid, user, end_at in fixtures.subscriptions
    ]
    if rows:
        await connection.execute(insert(Subscription), rows)
