"""A Flask app for ``flask --app tests.listener_app signalbus listen`` in listener tests.

Its sends are observable across processes: each sent row appends a line
``<model> <id> <pid>`` to the file named by ``$LISTENER_SENT_FILE``.
``Flaky``'s send raises while the file named by ``$LISTENER_FAIL_FILE`` exists.
The database is ``$LISTENER_DATABASE_URL``; ``$LISTENER_PROBE_INTERVAL`` sets
``SIGNALBUS_PROBE_INTERVAL``, and ``SIGNALBUS_*`` variables set their keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from signalbus import SignalBusMixin
from signalbus.triggers import check_signal_triggers


class ListenerSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


db = ListenerSQLAlchemy()


def record(model: type, rows: Sequence[Any]) -> None:
    """Append one line per sent row to the sent file, in one ``write()``."""
    lines = "".join(f"{model.__name__} {row.id} {os.getpid()}\n" for row in rows)
    fd = os.open(os.environ["LISTENER_SENT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


class Recorded:
    """Sends that record every row in the sent file."""

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        record(cls, [obj])

    @classmethod
    def send_signalbus_messages(cls, objs: Sequence[Any]) -> None:
        record(cls, objs)


class Tick(Recorded, db.Model):
    """A healthy signal, sent in bursts of up to 100; its rows say when they were recorded."""

    signalbus_burst_count: ClassVar[int] = 100
    signalbus_timestamp_column: ClassVar[str] = "inserted_at"

    id = db.Column(db.BigInteger, primary_key=True)
    inserted_at = db.Column(
        db.DateTime(timezone=True), nullable=False, server_default=db.func.clock_timestamp()
    )


class Ordered(Recorded, db.Model):
    """A signal whose rows must go out strictly in key order, in bursts of up to 20."""

    signalbus_ordered: ClassVar[bool] = True
    signalbus_burst_count: ClassVar[int] = 20

    id = db.Column(db.BigInteger, primary_key=True)


class Flaky(db.Model):
    """A signal whose send fails while the fail file exists."""

    id = db.Column(db.BigInteger, primary_key=True)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        if os.path.exists(os.environ.get("LISTENER_FAIL_FILE", "")):
            raise ConnectionError("the broker refused a Flaky message")
        record(cls, [obj])


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["LISTENER_DATABASE_URL"]
    if "LISTENER_PROBE_INTERVAL" in os.environ:
        app.config["SIGNALBUS_PROBE_INTERVAL"] = float(os.environ["LISTENER_PROBE_INTERVAL"])
    app.config.update({key: os.environ[key] for key in os.environ if key.startswith("SIGNALBUS_")})
    db.init_app(app)
    return app


def create_schema(app: Flask) -> None:
    """Create the signal tables and their notification triggers."""
    with app.app_context():
        db.create_all()
        tables = db.signalbus.get_signal_tables()
        check_signal_triggers(db, tables, app.config["SIGNALBUS_CHANNEL"], install=True)
