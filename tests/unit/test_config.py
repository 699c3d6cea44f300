"""The configuration checks."""

from __future__ import annotations

import math

import pytest

from signalbus.config import (
    check_channel,
    check_flag,
    check_seconds,
    check_workers,
    listener_settings,
)


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


@pytest.mark.parametrize(
    ("value", "flag"), [(True, True), (False, False), ("true", True), (" On ", True), ("0", False)]
)
def test_check_flag_takes_booleans_and_their_spellings(value: object, flag: bool) -> None:
    assert check_flag("F", value) is flag


@pytest.mark.parametrize("value", [1, 0, "maybe", None, [True]])
def test_check_flag_rejects_the_rest(value: object) -> None:
    with pytest.raises(ValueError, match="F must be true or false"):
        check_flag("F", value)


def test_the_listener_joins_the_wake_protocol_unless_told_to_always_notify() -> None:
    assert listener_settings({}).always_notify is False
    assert listener_settings({"SIGNALBUS_ALWAYS_NOTIFY": "yes"}).always_notify is True
    with pytest.raises(ValueError, match="SIGNALBUS_ALWAYS_NOTIFY must be true or false"):
        listener_settings({"SIGNALBUS_ALWAYS_NOTIFY": "sometimes"})
