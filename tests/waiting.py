"""Polling until a condition holds, failing the test with a clear message if it does not."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "",
    interval: float = 0.01,
) -> T:
    """Poll *condition* every *interval* s until it returns a true value, and return that.

    After *timeout* seconds the test fails with "timed out after ... waiting for
    *what*"; *what* may be a function, called then (to describe the state at
    the time of the failure), and defaults to the condition's repr.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout} s waiting for {description or condition}")
        time.sleep(interval)
    return result
