"""The sender's limits and policies: ``DIANABOT_SENDER__...``, the ``sender`` section of the settings tree.

Read once with the root ``Settings`` (environment and ``.env``) and handed to ``TelegramSender``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from dianabot_core.config import Section


class SenderSettings(Section):
    """Cluster-wide send limits (shared by every process through PostgreSQL) and delivery policies."""

    global_rate_per_s: float = Field(
        25.0,
        gt=0,
        description="Messages per second for the whole bot, across every process (Telegram: about 30).",
    )
    private_chat_interval_s: float = Field(
        1.2,
        ge=1.0,
        description="Seconds between two messages to one private chat (Telegram: about 1/s; "
        "the extra 0.2 s absorbs network jitter).",
    )
    group_interval_s: float = Field(
        3.3,
        ge=3.0,
        description="Seconds between two messages to one group or channel (Telegram: 20/min).",
    )
    admin_rate_per_s: float = Field(
        10.0,
        gt=0,
        description="Member and invite-link calls per second (ban, unban, invite links, join requests).",
    )
    bulk_horizon_s: float = Field(
        0.25,
        gt=0,
        description="How far ahead bulk sends may reserve send slots; a critical send waits at most this "
        "long behind bulk traffic.",
    )
    late_slot_s: float = Field(
        0.1,
        gt=0,
        description="A slot whose call would start later than this after it (a stalled process) is given "
        "up and a new one taken. It bounds bunching: sends at most L late put at most rate x (1 + L) + 1 "
        "in any second, 28.5 at the default 25/s, under Telegram's 30.",
    )
    max_wait_in_call_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait (slots, 429 retry_after) one send call absorbs before it hands the "
        "message back to the pipeline as a transient failure.",
    )
    in_flight_lease_s: float = Field(
        30.0,
        gt=0,
        description="A send recorded as started longer ago than this, without an outcome, is 'unknown' "
        "(the process died or timed out mid-call); younger ones are treated as still in flight.",
    )
    parallel_sends: int = Field(
        8, ge=1, le=64, description="Sends one batch of notifications runs concurrently (distinct users)."
    )
    broadcast_chunk_size: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Recipients fanned out per broadcast step (keyset page size); small pages keep each "
        "step short, so the critical lane in the same process is not held up.",
    )
    broadcast_resend_if_unknown: bool = Field(
        False,
        description="Resend a broadcast message whose earlier outcome is unknown (may duplicate it).",
    )
    db_pool_size: int = Field(
        5, ge=1, description="The sender's own connections (ledger and limits); separate from handlers'."
    )

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> SenderSettings:
        if self.in_flight_lease_s <= self.late_slot_s:
            raise ValueError("in_flight_lease_s must be longer than late_slot_s")
        return self

    @property
    def global_interval_s(self) -> float:
        return 1.0 / self.global_rate_per_s

    @property
    def admin_interval_s(self) -> float:
        return 1.0 / self.admin_rate_per_s
