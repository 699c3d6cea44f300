"""Waiting for a condition of external processes and servers, for the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll *condition* every *interval* s; say whether it held within *timeout* s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
