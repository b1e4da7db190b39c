"""The chaos suite's idle figure: a failed offsets read is not progress."""

from __future__ import annotations

from bench.chaos.progress import Sample, idle_windows, recovery_s

KEY = ("dianabot.notifications.send.bulk", "dianabot.notifications.bulk", 3)


def _samples(committed: list[int], end: int = 900) -> list[Sample]:
    return [Sample(float(t), {KEY: (c, end)}) for t, c in enumerate(committed)]


def test_a_partition_stuck_through_a_failed_read_is_one_idle_window() -> None:
    # During a Kafka restart the group's offsets read back as nothing (0): the partition did not
    # move, and the window must not end there (it hid a 349 s stall as 203 s).
    windows = idle_windows(_samples([600, 649, 649, 0, 649, 649, 700]))

    assert [(w.start, w.end) for w in windows] == [(1.0, 6.0)]


def test_progress_ends_an_idle_window() -> None:
    windows = idle_windows(_samples([649, 649, 650, 650, 650]))

    assert [(w.start, w.end, w.seconds) for w in windows] == [(0.0, 2.0, 2.0), (2.0, 4.0, 2.0)]


def test_a_failed_read_is_not_a_recovery() -> None:
    assert recovery_s(_samples([649, 0, 649, 655]), fault_end=0.0) == 3.0
