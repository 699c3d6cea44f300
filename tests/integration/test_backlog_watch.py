"""A listener's backlogs: measured on the real database, rarely, and never when idle."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from signalbus.activity import Activity
from signalbus.backlog import Backlog, measure_backlogs
from signalbus.backlog_watch import BACKLOG_REFRESH, BacklogWatch
from signalbus.model import SignalModel
from tests.models import BatchSignal, SingleSignal, db, recorder

pytestmark = pytest.mark.usefixtures("app_context")

MODELS = [BatchSignal, SingleSignal]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_database_is_measured_once_and_then_left_alone() -> None:
    clock, measured = Clock(), list[list[str]]()

    def measure(models: Sequence[SignalModel]) -> dict[SignalModel, Backlog]:
        measured.append([model.__name__ for model in models])
        return measure_backlogs(db.signalbus, models)

    activity = Activity(MODELS, ["db"], clock)
    watch = BacklogWatch(MODELS, measure, activity.take_changed, clock=clock)
    assert watch.current() == {BatchSignal: Backlog(0, None), SingleSignal: Backlog(0, None)}
    for _ in range(10):  # scrapes of an idle listener
        clock.now += BACKLOG_REFRESH
        watch.current()
    assert measured == [["BatchSignal", "SingleSignal"]]

    db.session.execute(sa.insert(SingleSignal.__table__), [{"message_text": "t"}] * 3)
    db.session.commit()
    activity.requested(SingleSignal)  # its notification
    assert watch.current()[SingleSignal] == Backlog(0, None)  # not due yet
    clock.now += BACKLOG_REFRESH
    assert watch.current()[SingleSignal] == Backlog(3, None)
    clock.now += BACKLOG_REFRESH
    watch.current()  # rows were pending: measured again, though nothing changed
    clock.now += BACKLOG_REFRESH
    watch.current()
    assert measured[1:] == [["SingleSignal"], ["SingleSignal"], ["SingleSignal"]]


def test_oldest_ages_grow_between_measurements() -> None:
    clock = Clock()
    db.session.execute(
        sa.text("INSERT INTO batch_signal (id, payload, inserted_at) VALUES (1, 'x', now())")
    )
    db.session.commit()
    activity = Activity(MODELS, ["db"], clock)
    watch = BacklogWatch(
        MODELS,
        lambda models: measure_backlogs(db.signalbus, models),
        activity.take_changed,
        clock=clock,
    )
    first = watch.current()[BatchSignal].oldest_age
    assert first is not None and first < 5
    clock.now += 3
    later = watch.current()[BatchSignal].oldest_age
    assert later == pytest.approx(first + 3)


def test_quarantined_rows_are_looked_at_again_only_every_minute() -> None:
    clock, measured = Clock(), list[list[str]]()

    def measure(models: Sequence[SignalModel]) -> dict[SignalModel, Backlog]:
        measured.append([model.__name__ for model in models])
        return measure_backlogs(db.signalbus, models)

    db.session.execute(
        sa.text("INSERT INTO batch_signal (id, payload) SELECT g, 'p' FROM generate_series(1, 5) g")
    )
    db.session.commit()
    recorder.bad.add(3)
    db.signalbus.flushmany([BatchSignal])
    activity = Activity(MODELS, ["db"], clock)
    watch = BacklogWatch(MODELS, measure, activity.take_changed, clock=clock)
    assert watch.current()[BatchSignal] == Backlog(0, None, quarantined=1)
    for _ in range(11):  # 55 s of scrapes
        clock.now += BACKLOG_REFRESH
        watch.current()
    assert len(measured) == 1
    clock.now += BACKLOG_REFRESH  # 60 s
    watch.current()
    assert measured[1:] == [["BatchSignal"]]


def test_a_failed_measurement_leaves_the_changed_models_due() -> None:
    clock, failing = Clock(), [False]

    def measure(models: Sequence[SignalModel]) -> dict[SignalModel, Backlog]:
        if failing[0]:
            raise RuntimeError("the database is down")
        return measure_backlogs(db.signalbus, models)

    activity = Activity(MODELS, ["db"], clock)
    watch = BacklogWatch(MODELS, measure, activity.take_changed, clock=clock)
    watch.current()
    db.session.execute(sa.insert(SingleSignal.__table__), [{"message_text": "t"}] * 2)
    db.session.commit()
    activity.requested(SingleSignal)
    failing[0] = True
    clock.now += BACKLOG_REFRESH
    assert watch.current()[SingleSignal] == Backlog(0, None)  # the last known value
    failing[0] = False
    clock.now += BACKLOG_REFRESH
    assert watch.current()[SingleSignal] == Backlog(2, None)  # still due, though told once
