"""Alert incidents and monitoring figures in PostgreSQL: what the admin chat has been told, and when.

``alert_incidents`` holds one row per alert key. An ``alert.raised`` opens the incident (or reopens a
resolved one) and updates what it says; the admin chat hears about it once when it opens, then at
most once per remind interval while it stays open (``notice_due``); an ``alert.resolved`` closes it
with one recovery message. Every message's send key is derived from the incident (its key, when it
opened, which notice), so a redelivered event or a retried handler never sends it twice.

``monitoring_counters`` keeps figures one heartbeat compares with the next (the dead-letter topic's
end offsets), so growth is measured across heartbeats, restarts and consumer processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, Integer, String, Text, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from dianabot_contracts.ids import derived_event_id
from dianabot_core.model_base import Base

Severity = Literal["warning", "critical"]
_RANK = {"warning": 0, "critical": 1}


class AlertIncident(Base):
    """One alert key's incident: open while ``resolved_at`` is null."""

    __tablename__ = "alert_incidents"

    alert_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'::jsonb"))
    # When the opening alert was raised (its envelope's occurred_at): the same on every redelivery,
    # so the send keys derived from it are too.
    opened_at: Mapped[datetime]
    # The last alert.raised for it: incidents nobody reports again are closed after a quiet spell.
    last_seen_at: Mapped[datetime]
    last_notified_at: Mapped[datetime | None]
    notify_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    resolved_at: Mapped[datetime | None]


class MonitoringCounter(Base):
    """A figure the heartbeat remembers between runs (e.g. ``dead_letters:<topic>`` end offsets)."""

    __tablename__ = "monitoring_counters"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    observed_at: Mapped[datetime]


@dataclass(frozen=True)
class Notice:
    """A message the admin chat is due: ``send_key`` makes it at most once per incident and notice."""

    send_key: str
    incident: IncidentView
    kind: Literal["opened", "reminder", "escalated", "resolved"]


@dataclass(frozen=True)
class IncidentView:
    alert_key: str
    severity: str
    summary: str
    details: dict[str, Any]
    opened_at: datetime
    notify_count: int
    resolved_at: datetime | None = None


def notice_due(
    last_notified_at: datetime | None,
    now: datetime,
    remind_every: timedelta,
    *,
    was: str | None = None,
    now_severity: str | None = None,
) -> bool:
    """Whether an open incident's repeat report goes to the chat: never told, reminder due, or worse now."""
    if last_notified_at is None or now - last_notified_at >= remind_every:
        return True
    return was is not None and now_severity is not None and _RANK[now_severity] > _RANK.get(was, 0)


async def record_raised(
    session: AsyncSession,
    *,
    alert_key: str,
    severity: Severity,
    summary: str,
    details: dict[str, Any],
    raised_at: datetime,
    now: datetime,
    remind_every: timedelta,
) -> Notice | None:
    """Open, reopen or update the incident (row locked until commit); the notice due now, if any.

    ``raised_at`` is the alert's own time (its envelope's ``occurred_at``), ``now`` the handler's.
    """
    await session.execute(
        insert(AlertIncident)
        .values(
            alert_key=alert_key,
            severity=severity,
            summary=summary,
            details=details,
            opened_at=raised_at,
            last_seen_at=now,
        )
        .on_conflict_do_nothing(index_elements=[AlertIncident.alert_key])
    )
    incident = await session.get(AlertIncident, alert_key, with_for_update=True, populate_existing=True)
    assert incident is not None
    if incident.resolved_at is not None:
        incident.opened_at, incident.resolved_at = raised_at, None
        incident.last_notified_at, incident.notify_count = None, 0
    was = incident.severity
    due = notice_due(incident.last_notified_at, now, remind_every, was=was, now_severity=severity)
    kind: Literal["opened", "reminder", "escalated"] = (
        "opened"
        if incident.notify_count == 0
        else "escalated"
        if _RANK[severity] > _RANK[was]
        else "reminder"
    )
    incident.severity, incident.summary, incident.details = severity, summary, details
    incident.last_seen_at = now
    if not due:
        return None
    incident.notify_count += 1
    incident.last_notified_at = now
    view = _view(incident)
    return Notice(_send_key(view, str(view.notify_count)), view, kind)


async def record_resolved(session: AsyncSession, *, alert_key: str, now: datetime) -> Notice | None:
    """Close the open incident; the recovery notice, or None when nothing was open."""
    incident = await session.get(AlertIncident, alert_key, with_for_update=True, populate_existing=True)
    if incident is None or incident.resolved_at is not None:
        return None
    incident.resolved_at = now
    view = _view(incident)
    return Notice(_send_key(view, "resolved"), view, "resolved")


async def open_incidents(session: AsyncSession) -> Sequence[AlertIncident]:
    rows = await session.scalars(
        select(AlertIncident).where(AlertIncident.resolved_at.is_(None)).order_by(AlertIncident.opened_at)
    )
    return rows.all()


async def read_counter(session: AsyncSession, name: str) -> int | None:
    value: int | None = await session.scalar(
        select(MonitoringCounter.value).where(MonitoringCounter.name == name)
    )
    return value


async def write_counter(session: AsyncSession, name: str, value: int, now: datetime) -> None:
    statement = insert(MonitoringCounter).values(name=name, value=value, observed_at=now)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[MonitoringCounter.name],
            set_={"value": statement.excluded.value, "observed_at": statement.excluded.observed_at},
        )
    )


def _view(incident: AlertIncident) -> IncidentView:
    return IncidentView(
        incident.alert_key,
        incident.severity,
        incident.summary,
        dict(incident.details),
        incident.opened_at,
        incident.notify_count,
        incident.resolved_at,
    )


def _send_key(incident: IncidentView, notice: str) -> str:
    # The alert key may be long; the incident (key + when it opened) is folded into a UUID.
    return f"alert:{derived_event_id(incident.alert_key, incident.opened_at.isoformat())}:{notice}"
