"""The flush schedule of one model, on a clock the test turns."""

from __future__ import annotations

import pytest

from signalbus.backoff import Backoff
from signalbus.schedule import FlushSchedule

SWEEP = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def schedule(clock: Clock) -> FlushSchedule:
    return FlushSchedule(SWEEP, Backoff(0.5, 30.0), clock)


def test_a_healthy_model_sweeps_and_answers_every_request(
    schedule: FlushSchedule, clock: Clock
) -> None:
    assert schedule.timeout() == pytest.approx(SWEEP)
    assert schedule.is_due()  # a request
    clock.now += SWEEP + 1
    assert schedule.timeout() == 0.0
    schedule.succeeded()
    assert schedule.timeout() == pytest.approx(SWEEP)
    assert not schedule.failing


def test_a_failure_waits_for_its_retry_and_ignores_plain_requests(
    schedule: FlushSchedule, clock: Clock
) -> None:
    delay = schedule.failed()
    assert 0.25 <= delay <= 0.5
    assert schedule.failing and schedule.failures == 1
    assert schedule.timeout() == pytest.approx(delay)
    assert not schedule.is_due()  # a notification while backing off
    clock.now += delay
    assert schedule.is_due()


def test_a_catch_up_cuts_the_backoff_short_once(schedule: FlushSchedule) -> None:
    schedule.failed()
    schedule.request_catch_up()
    assert schedule.is_due()
    assert not schedule.is_due()


def test_delays_double_up_to_the_cap(schedule: FlushSchedule, clock: Clock) -> None:
    ceilings = []
    for _ in range(10):
        delay = schedule.failed()
        ceilings.append(delay)
        clock.now += delay
    assert schedule.failures == 10
    assert all(delay <= 30.0 for delay in ceilings)
    assert ceilings[-1] >= 15.0  # the ceiling reached the cap


def test_a_success_ends_the_failure_streak(schedule: FlushSchedule, clock: Clock) -> None:
    for _ in range(3):
        clock.now += schedule.failed()
    schedule.succeeded()
    assert not schedule.failing and schedule.failures == 0
    assert schedule.timeout() == pytest.approx(SWEEP)
    assert 0.25 <= schedule.failed() <= 0.5
