"""Latency statistics shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

#: p50, p95, p99 and max, by name.
Stats = dict[str, float]


def percentiles(values: Sequence[float]) -> Stats:
    """Return p50, p95, p99 and max of *values* (nearest rank)."""
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def median_stats(runs: Sequence[Stats]) -> Stats:
    """Return the median of each statistic over *runs*."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def format_stats(stats: Stats) -> str:
    """Return *stats* as ``p50    1.23  p95    4.56 ...``."""
    return "  ".join(f"{key} {value:7.2f}" for key, value in stats.items())
