"""Every domain's handlers, in one list the app wires up.

Scheduled jobs register on `consumers.jobs.jobs` when their module is imported (economy has
jobs only), and ride on `jobs.handlers`.
"""

from __future__ import annotations

from consumers import (
    broadcasts,
    channels,
    content,
    economy,
    gamification,
    jobs,
    monitoring,
    notifications,
    subscriptions,
    users,
)
from dianabot_core.pipeline.handlers import HandlerGroup

del economy  # imported for its job registrations

HANDLER_GROUPS: tuple[HandlerGroup, ...] = (
    users.handlers,
    jobs.handlers,
    notifications.handlers,
    broadcasts.handlers,
    subscriptions.handlers,
    content.handlers,
    channels.handlers,
    gamification.handlers,
    monitoring.handlers,
)
