"""The running processes need the schema: migrate the test database once for the session."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture(autouse=True, scope="session")
def _migrated(engine: AsyncEngine) -> None:
    del engine
