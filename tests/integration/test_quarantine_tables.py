"""Isolation and quarantine with tables that are not shaped like the usual test models.

A column named as its table, a primary key column named explicitly, a
generated column, a timestamp column whose attribute has another name, and
a database URL with a password that an error quotes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.engine import make_url

from signalbus import SignalBusMixin
from signalbus.activity import Activity
from signalbus.quarantine import list_quarantined, requeue, table_key

PASSWORD = "qu4rantine-s3cret"


class OddSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


db = OddSQLAlchemy()
sent: list[int] = []


class Status(db.Model):
    """A signal whose rows with status "bad" cannot be sent."""

    __tablename__ = "status"
    signalbus_burst_count = 10
    signalbus_timestamp_column = "inserted_at"

    key = db.Column("n", db.Integer, primary_key=True, autoincrement=False)
    status = db.Column(db.Text, nullable=False)
    double = db.Column(db.Integer, db.Computed("n * 2", persisted=True))
    recorded = db.Column(
        "inserted_at", db.DateTime(timezone=True), server_default=db.func.clock_timestamp()
    )

    @classmethod
    def send_signalbus_message(cls, row: Any) -> None:
        cls.send_signalbus_messages([row])

    @classmethod
    def send_signalbus_messages(cls, rows: Any) -> None:
        if any(row.status == "bad" for row in rows):
            url = db.engine.url.render_as_string(hide_password=False)
            raise ValueError(f"cannot send to {url}")
        sent.extend(row.key for row in rows)


@pytest.fixture
def odd_app(database_url: str) -> Iterator[Flask]:
    app = Flask(__name__)
    url = make_url(database_url).set(password=PASSWORD)
    app.config["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    db.init_app(app)
    sent.clear()
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


def insert(*rows: tuple[int, str]) -> None:
    db.session.execute(sa.insert(Status), [{"key": n, "status": s} for n, s in rows])
    db.session.commit()


def records() -> list[tuple[Any, ...]]:
    query = (
        "SELECT row_key, row_values, last_error, quarantined_at IS NOT NULL"
        " FROM signalbus_quarantine ORDER BY id"
    )
    rows = db.session.execute(sa.text(query)).all()
    db.session.rollback()
    return [tuple(row) for row in rows]


@pytest.mark.usefixtures("odd_app")
def test_the_whole_row_is_kept_under_its_key_and_no_password_in_the_error() -> None:
    insert((1, "ok"), (2, "ok"), (3, "bad"), (4, "ok"))
    assert db.signalbus.flushmany([Status]) == 3
    [(row_key, values, error, parked)] = records()
    assert row_key == {"n": 3} and parked
    assert values["status"] == "bad" and values["n"] == 3 and values["double"] == 6
    assert PASSWORD not in error and "***" in error


@pytest.mark.usefixtures("odd_app")
def test_requeue_skips_the_generated_column_and_keeps_the_key() -> None:
    insert((1, "ok"), (3, "bad"))
    db.signalbus.flushmany([Status])
    db.session.execute(
        sa.text('UPDATE signalbus_quarantine SET row_values = row_values || \'{"status": "ok"}\'')
    )
    db.session.commit()
    with db.engine.begin() as connection:
        result = requeue(connection, {table_key(Status): Status})
    assert len(result.done) == 1 and result.conflicts == []
    assert db.session.execute(sa.select(Status.key, Status.double)).all() == [(3, 6)]
    db.session.rollback()
    db.signalbus.flushmany([Status])
    assert sent == [1, 3]


@pytest.mark.usefixtures("odd_app")
def test_a_key_taken_again_gets_a_record_of_its_own() -> None:
    insert((1, "ok"), (3, "bad"))
    db.signalbus.flushmany([Status])
    insert((2, "ok"), (3, "bad"))  # a new row with the quarantined row's key
    db.signalbus.flushmany([Status])
    assert [(key, parked) for key, _, _, parked in records()] == [({"n": 3}, True)] * 2
    with db.engine.connect() as connection:
        assert len(list_quarantined(connection)) == 2


@pytest.mark.usefixtures("odd_app")
def test_delivery_times_come_from_the_timestamp_column_under_its_attribute_name() -> None:
    insert((1, "ok"), (2, "ok"))
    activity = Activity([Status], ["db"])
    db.signalbus.flush_model(Status, observe=activity.burst_sent)
    [signal] = activity.snapshot().signals
    assert signal.delivery_seconds is not None and sum(signal.delivery_seconds.counts) == 2
