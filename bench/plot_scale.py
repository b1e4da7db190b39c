"""The scale-out and soak figures as one PNG: drain throughput per consumer process count, and the
consumer process's RSS over the soak.

Reads the JSON objects ``bench/scaleout.py`` and ``bench/soak.py`` print. Needs matplotlib (the
``bench`` extra: ``pip install -e '.[bench]'``).
Run: ``python -m bench.plot_scale scaleout.json soak.json docs/bench-scale-soak.png``
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any


def plot(scaleout: dict[str, Any], soak: dict[str, Any], out: Path) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # no display: write the file only
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4), dpi=100)

    table = scaleout["table"]
    counts = [row["processes"] for row in table]
    width = 0.38
    overall = [row["events_per_s"] for row in table]
    steady = [row["events_per_s_with_all_processes"] or 0 for row in table]
    left.bar([c - width / 2 for c in counts], overall, width, label="whole drain (joins, kill -9 + restart)")
    left.bar(
        [c + width / 2 for c in counts], steady, width, label="all processes in the group, before the kill"
    )
    left.set_ylim(0, max(overall + steady) * 1.3)  # room for the legend above the bars
    left.set_xticks(counts)
    left.set_xlabel("consumer processes")
    left.set_ylabel("user.activity events/s")
    left.set_title(
        f"Drain of {scaleout['events']:,} events, {scaleout['partitions']} partitions, "
        f"{scaleout['cpus']} CPUs",
        fontsize=10,
    )
    left.legend(loc="upper left", fontsize=8)

    series = soak["rss_mib_series"]
    memory = soak["memory"]
    right.plot([t / 60 for t, _ in series], [rss for _, rss in series], marker=".", linewidth=1)
    right.axvline(memory["warmup_s"] / 60, color="grey", linestyle="--", linewidth=1, label="end of warm-up")
    right.set_xlabel("minutes since publishing began")
    right.set_ylabel("consumer process RSS, MiB")
    right.set_ylim(bottom=0)
    right.set_title(
        f"Soak: {soak['events_handled']:,} events at {soak['rate_per_s']:g}/s, "
        f"RSS {memory['growth_percent']:+.1f} % after warm-up",
        fontsize=10,
    )
    right.legend(loc="lower right", fontsize=8)

    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("scaleout", type=Path, help="the JSON bench/scaleout.py printed")
    parser.add_argument("soak", type=Path, help="the JSON bench/soak.py printed")
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/bench-scale-soak.png"))
    a = parser.parse_args(argv)
    plot(json.loads(a.scaleout.read_text()), json.loads(a.soak.read_text()), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
