"""Every domain's handlers, in one list the app wires up."""

from __future__ import annotations

from consumers import jobs, users
from core.pipeline.handlers import HandlerGroup

HANDLER_GROUPS: tuple[HandlerGroup, ...] = (users.handlers, jobs.handlers)
