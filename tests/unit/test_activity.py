"""The listener's record of its work, its progress lines, and the probes read from it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

from signalbus.activity import Activity, Histogram
from signalbus.probes import STALL_SECONDS, health, readiness
from signalbus.progress import BACKLOG_LINE_ROWS, PROGRESS_INTERVAL, ProgressLog


class Base(DeclarativeBase):
    pass


class Timed(Base):
    __tablename__ = "timed"
    signalbus_timestamp_column = "at"
    id = sa.Column(sa.Integer, primary_key=True)
    at = sa.Column(sa.DateTime(timezone=True))

    @classmethod
    def send_signalbus_message(cls, obj: object) -> None: ...


class Plain(Base):
    __tablename__ = "plain"
    id = sa.Column(sa.Integer, primary_key=True)

    @classmethod
    def send_signalbus_message(cls, obj: object) -> None: ...


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rows(count: int, age: float | None = None) -> list[SimpleNamespace]:
    at = None if age is None else datetime.now(UTC) - timedelta(seconds=age)
    return [SimpleNamespace(id=i, at=at) for i in range(count)]


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.sum == pytest.approx(8.65)


def test_bursts_count_rows_delivery_times_and_the_rate_of_the_last_minute() -> None:
    clock = Clock()
    activity = Activity([Timed, Plain], ["db"], clock)
    activity.burst_sent(Timed, rows(30, age=2.0), started=clock.now - 0.02)
    activity.burst_sent(Plain, rows(5), started=clock.now)
    clock.now += 30
    activity.burst_sent(Timed, rows(30, age=2.0), started=clock.now)
    timed, plain = activity.snapshot().signals
    assert (timed.name, timed.sent, plain.sent) == ("Timed", 60, 5)
    assert timed.rate == pytest.approx(1.0)  # 60 rows in the last 60 s
    assert sum(timed.flush_seconds.counts) == 2
    assert timed.delivery_seconds is not None and sum(timed.delivery_seconds.counts) == 60
    assert 2.0 <= timed.delivery_seconds.sum / 60 < 3.0
    assert plain.delivery_seconds is None
    clock.now += 45
    timed, _ = activity.snapshot().signals
    assert timed.rate == pytest.approx(0.5)  # the first burst left the window
    assert activity.take_changed() == {Timed, Plain}
    assert activity.take_changed() == set()


def test_failing_lasts_until_a_flush_works_and_readiness_follows() -> None:
    clock = Clock()
    activity = Activity([Timed], ["db"], clock)
    activity.listening("db", True)
    activity.flush_failed(Timed, "row", "boom")
    clock.now += 10
    activity.flush_failed(Timed, "outage", "broker down")
    clock.now += 51
    [signal] = activity.snapshot().signals
    assert signal.failures == {"outage": 1, "row": 1}
    assert signal.failing_for == pytest.approx(61) and signal.last_error == "broker down"
    probe = readiness(activity.snapshot(), failing_limit=60)
    assert not probe.ok
    assert probe.body["reasons"] == ["sending Timed signals has failed for 61 s: broker down"]
    assert readiness(activity.snapshot(), failing_limit=120).ok
    activity.flush_ended(Timed, drained=True)
    assert activity.snapshot().signals[0].failing_for is None
    assert readiness(activity.snapshot(), failing_limit=60).body == {"status": "ready"}


def test_not_ready_until_every_database_is_listened_on() -> None:
    activity = Activity([Timed], ["db one", "db two"], Clock())
    activity.listening("db one", True)
    probe = readiness(activity.snapshot(), failing_limit=60)
    assert (probe.ok, probe.body["reasons"]) == (False, ["not listening on db two"])


def test_healthy_while_the_main_loop_turns() -> None:
    clock = Clock()
    activity = Activity([Timed], ["db"], clock)
    clock.now += STALL_SECONDS - 1
    assert health(activity.snapshot()).ok
    clock.now += 2
    probe = health(activity.snapshot())
    assert not probe.ok and probe.body["status"] == "stalled"
    activity.turned()
    assert health(activity.snapshot()).ok


def test_progress_lines_at_most_once_a_minute_and_for_big_backlogs_drained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = ProgressLog(clock)
    caplog.set_level(logging.INFO, "signalbus")
    for _ in range(12):  # 12 bursts of 1000, 10 s apart
        progress.sent("Timed", 1000)
        clock.now += 10
    progress.flushed("Timed", drained=False)
    progress.sent("Timed", 500)
    progress.flushed("Timed", drained=True)
    progress.sent("Plain", 10)
    progress.flushed("Plain", drained=True)
    assert [record.getMessage() for record in caplog.records] == [
        f"Sent 7000 Timed signals in {PROGRESS_INTERVAL:.0f} s (117/s).",
        "Sent 5500 Timed signals in 60 s (92/s).",
        "Drained a backlog of 12500 Timed signals in 120.0 s.",
    ]
    assert BACKLOG_LINE_ROWS == 10_000
