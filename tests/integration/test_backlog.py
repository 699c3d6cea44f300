"""Measuring backlogs: bounded counts and the age of the oldest row, one statement per database."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from signalbus.backlog import PENDING_COUNT_LIMIT, Backlog, measure_backlogs
from signalbus.errors import ConfigurationError
from tests.models import BatchSignal, CompositeSignal, SingleSignal, db, recorder

pytestmark = pytest.mark.usefixtures("app_context")


def insert(model: Any, ids: range, **values: Any) -> None:
    table = model.__table__
    db.session.execute(sa.insert(table), [{"id": i, **values} for i in ids])
    db.session.commit()


def test_empty_tables_measure_zero_without_an_age() -> None:
    backlogs = measure_backlogs(db.signalbus, [BatchSignal, SingleSignal, CompositeSignal])
    assert backlogs == {model: Backlog(0, None) for model in backlogs}
    assert set(backlogs) == {BatchSignal, SingleSignal, CompositeSignal}


def test_the_oldest_row_is_the_first_by_primary_key_aged_by_the_database_clock() -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO batch_signal (id, payload, inserted_at) VALUES"
            " (2, 'x', now() - interval '90 seconds'), (5, 'y', now() - interval '1 hour')"
        )
    )
    db.session.commit()
    insert(SingleSignal, range(1, 4), message_text="t")
    backlogs = measure_backlogs(db.signalbus, [BatchSignal, SingleSignal])
    assert backlogs[BatchSignal].pending == 2
    assert 90 <= backlogs[BatchSignal].oldest_age < 150  # row 2, not the older row 5
    assert backlogs[SingleSignal] == Backlog(3, None)  # no timestamp column


def test_counting_stops_at_the_limit() -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO single_signal (id, message_text)"
            " SELECT g, 't' FROM generate_series(1, :n) g"
        ),
        {"n": PENDING_COUNT_LIMIT + 5},
    )
    db.session.commit()
    backlog = measure_backlogs(db.signalbus, [SingleSignal])[SingleSignal]
    assert backlog.pending == PENDING_COUNT_LIMIT
    assert backlog.capped and backlog.describe_pending() == f"{PENDING_COUNT_LIMIT}+"
    assert Backlog(7, None).describe_pending() == "7"


def test_a_timestamp_column_that_is_not_a_datetime_is_a_configuration_error(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_timestamp_column", "payload", raising=False)
    with pytest.raises(
        ConfigurationError, match=r"BatchSignal.signalbus_timestamp_column .*inserted_at"
    ):
        measure_backlogs(db.signalbus, [BatchSignal])


def test_quarantined_rows_are_counted_per_signal() -> None:
    insert(BatchSignal, range(1, 11), payload="p")
    recorder.bad.add(4)
    db.signalbus.flushmany([BatchSignal])
    backlogs = measure_backlogs(db.signalbus, [BatchSignal, SingleSignal])
    assert backlogs[BatchSignal] == Backlog(0, None, quarantined=1)
    assert backlogs[SingleSignal].quarantined == 0
    db.session.execute(sa.text("DROP TABLE signalbus_quarantine"))
    db.session.commit()
    assert measure_backlogs(db.signalbus, [BatchSignal])[BatchSignal].quarantined == 0
