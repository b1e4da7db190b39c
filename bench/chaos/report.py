"""The run's verdict: each target as a boolean, the faults with their recovery, effect totals."""

from __future__ import annotations

from typing import Any

from bench.chaos import faults
from bench.chaos.progress import Watch, recovery_s


def fault_report(records: list[faults.FaultRecord], watch: Watch) -> list[dict[str, Any]]:
    report = []
    for record in sorted(records, key=lambda r: r.started_s):
        ended = record.ended_s
        report.append(
            {
                "kind": record.kind,
                "target": record.target,
                "from_s": round(record.started_s, 1),
                "to_s": None if ended is None else round(ended, 1),
                "recovery_s": None if ended is None else recovery_s(watch.samples, ended),
                **record.detail,
            }
        )
    return report


def totals(effects: dict[str, dict[str, int]]) -> dict[str, int]:
    return {
        f"effects_{name}": sum(kind.get(name, 0) for kind in effects.values())
        for name in ("expected", "found", "lost", "duplicated", "unknown_outcome")
    }


def judge(report: dict[str, Any]) -> dict[str, bool]:
    telegram, letters = report["telegram"], report["dead_letters"]
    return {
        "no_effect_lost": report["effects_lost"] == 0,
        "no_effect_duplicated": report["effects_duplicated"] == 0,
        # A send cut off mid-call by SIGKILL is "unknown" in the send ledger and, by its documented
        # at-most-once rule (resend_if_unknown=False), not sent again: counted apart, not here.
        "no_message_lost": telegram["lost"] - telegram["lost_with_unknown_outcome"] == 0,
        "no_message_duplicated": telegram["duplicated"] == 0,
        "no_telegram_limit_violation": telegram["violations_total"] == 0,
        # A claim published but not yet marked when the process died is published again, as
        # dianabot_core/pipeline/dead_letters.py documents: such second copies are counted apart.
        "every_fuzzed_record_dead_lettered_once_per_handler": letters["missing"] == 0
        and letters["duplicated"] == letters["duplicated_after_a_crash"]
        and letters["unexpected"] == 0,
        "no_valid_event_dead_lettered": letters["valid_events_dead_lettered"] == 0,
        "no_partition_idle_too_long": report["max_partition_idle_s"] <= report["idle_limit_s"],
        "every_fault_recovered": all(f["recovery_s"] is not None for f in report["faults"]),
        "scheduler_slots_exactly_once": report["scheduler"].get("probe_slots_missing") == 0
        and report["scheduler"].get("probe_slots_with_two_ids") == 0,
        "drained": report["drained"],
        "no_foreign_consumers": not report["foreign_group_members"],
        "no_process_died_on_its_own": not report["process_exits"],
    }
