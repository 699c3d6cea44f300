"""The burst statement on psycopg directly: the same rows, types and errors as SQLAlchemy's."""

from __future__ import annotations

import decimal
import enum
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from signalbus import SignalBusMixin
from signalbus.connections import PooledConnections
from signalbus.conninfo import libpq_conninfo


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class TypedDB(SignalBusMixin, SQLAlchemy):
    pass


@pytest.fixture
def typed(database_url: str) -> Iterator[tuple[TypedDB, type, list[Any]]]:
    """A signal model whose columns need SQLAlchemy's result processors, and what it sent."""
    db = TypedDB()
    sent: list[Any] = []

    class TypedSignal(db.Model):  # type: ignore[name-defined, misc]
        id = db.Column(db.Integer, primary_key=True)
        color = db.Column(db.Enum(Color), nullable=False)
        price = db.Column(db.Numeric(10, 2, asdecimal=False), nullable=False)
        tags = db.Column(db.ARRAY(db.Text), nullable=False)
        data = db.Column(db.JSON, nullable=False)

        @classmethod
        def send_signalbus_message(cls, obj: Any) -> None:
            sent.append(obj)

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)
    with app.app_context():
        db.drop_all()
        db.create_all()
        db.session.add(
            TypedSignal(
                id=1, color=Color.BLUE, price=decimal.Decimal("9.50"), tags=["a"], data={"k": 1}
            )
        )
        db.session.commit()
        yield db, TypedSignal, sent
        db.drop_all()
        db.engine.dispose()


def test_rows_are_converted_as_sqlalchemy_converts_them(
    typed: tuple[TypedDB, type, list[Any]],
) -> None:
    db, model, sent = typed
    with PooledConnections(db.engine) as connections:
        assert db.signalbus.flusher(model).flush(connections).sent == 1
        assert connections.on_driver
    [row] = sent
    assert isinstance(row, sa.engine.Row)
    assert (row.id, row.color, row.price, row.tags, row.data) == (
        1,
        Color.BLUE,
        9.5,
        ["a"],
        {"k": 1},
    )
    assert isinstance(row.price, float)


def test_execution_listeners_see_the_burst_statement(
    typed: tuple[TypedDB, type, list[Any]],
) -> None:
    db, model, sent = typed
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    with PooledConnections(db.engine) as connections:
        assert db.signalbus.flusher(model).flush(connections).sent == 1
        assert not connections.on_driver
    assert any(statement.startswith("DELETE FROM typed_signal") for statement in seen)
    [row] = sent
    assert (row.id, row.color, row.price) == (1, Color.BLUE, 9.5)


def test_a_lost_connection_is_sqlalchemys_error_and_invalidated(
    typed: tuple[TypedDB, type, list[Any]], database_url: str
) -> None:
    db, model, sent = typed
    with PooledConnections(db.engine) as connections:
        backend = connections.get(0).exec_driver_sql("SELECT pg_backend_pid()").scalar()
        connections.get(0).rollback()
        with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(sa.exc.OperationalError) as caught:
            db.signalbus.flusher(model).flush(connections)
        assert caught.value.connection_invalidated
        assert connections.get(0).invalidated
    assert sent == []
    assert db.signalbus.flushmany([model]) == 1
