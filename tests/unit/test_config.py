"""The configuration checks."""

from __future__ import annotations

import math

import pytest

from signalbus.config import check_channel, check_seconds, check_workers


@pytest.mark.parametrize(("value", "seconds"), [(30, 30.0), (0.5, 0.5), ("12.5", 12.5)])
def test_check_seconds_takes_positive_numbers(value: object, seconds: float) -> None:
    assert check_seconds("X", value) == seconds


@pytest.mark.parametrize(
    "value", [0, -1, "abc", "", None, True, math.nan, math.inf, [1], 1e10, 10**400]
)
def test_check_seconds_rejects_the_rest(value: object) -> None:
    with pytest.raises(ValueError, match="X must be a positive number of seconds"):
        check_seconds("X", value)


def test_check_channel() -> None:
    assert check_channel("events") == "events"
    assert check_channel("é" * 31) == "é" * 31  # 62 bytes
    for bad in ("", None, "é" * 32, "x" * 64):
        with pytest.raises(ValueError):
            check_channel(bad)


@pytest.mark.parametrize(("value", "workers"), [(1, 1), ("8", 8), (64, 64)])
def test_check_workers_takes_whole_numbers_up_to_the_maximum(value: object, workers: int) -> None:
    assert check_workers("W", value) == workers


@pytest.mark.parametrize("value", [0, 65, -1, "", "2.5", 2.5, None, True])
def test_check_workers_rejects_the_rest(value: object) -> None:
    with pytest.raises(ValueError, match="W must be a whole number from 1 to 64"):
        check_workers("W", value)
