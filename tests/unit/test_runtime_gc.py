"""The garbage-collector pause watch: pauses are measured, long ones logged."""

from __future__ import annotations

import logging
import time

import pytest

from dianabot_core.metrics import GC_PAUSE_SECONDS
from dianabot_core.runtime import GcPauseWatch


def _count(generation: str) -> float:
    for metric in GC_PAUSE_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == generation:
                return sample.value
    return 0.0


def test_a_long_pause_is_observed_and_logged_a_short_one_only_observed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = GcPauseWatch(log_over_s=0.05)
    before = _count("2")
    with caplog.at_level(logging.WARNING, logger="dianabot"):
        watch("start", {"generation": 2, "collected": 0, "uncollectable": 0})
        watch("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        watch("start", {"generation": 2, "collected": 0, "uncollectable": 0})
        time.sleep(0.06)
        watch("stop", {"generation": 2, "collected": 7, "uncollectable": 0})
    assert _count("2") == before + 2
    [record] = [r for r in caplog.records if "garbage collection paused" in r.getMessage()]
    assert record.__dict__["collected"] == 7
