"""A Flask app publishing its signals to RabbitMQ, whose send cannot build some rows' messages.

For ``flask --app tests.poison_app signalbus ...`` in :mod:`tests.faults.test_poison`,
and in process for :mod:`bench.poison`. Two signal models of the same shape,
``PoisonSignal`` (table ``poison_signal``) and ``CleanSignal`` (``clean_signal``): an id
and a ``payload``, JSON text (``{}`` unless given), bursts of 1000 rows. A burst's
messages are those of the reference app (:func:`refapp.publishing.publish`: the payload
as the body, message id ``<table>:<id>``, routing key ``poison.signal`` or
``clean.signal``), published through :class:`signalbus.rabbitmq.Publisher`.

The send checks every row of a burst before publishing any; at the first row whose
payload is not JSON, or is a line of the file named by ``$POISON_REJECT_FILE``, it
publishes nothing and raises :class:`ValueError`. Before raising, it appends a line
``<table> <rows of the burst> <pid>`` to the file named by ``$POISON_REJECTED_FILE``,
if set, and then sleeps ``$POISON_SLOW_SECONDS`` (0 by default): the tests see an
isolation progress, and may kill the process in the middle of it.

The database is ``$POISON_DATABASE_URL``; ``SIGNALBUS_*`` variables set their keys
(``SIGNALBUS_RABBITMQ_URL`` and ``SIGNALBUS_EXCHANGE``: the broker and the topic
exchange, which must exist).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from refapp.publishing import init_publisher, publish
from signalbus import SignalBusMixin
from signalbus.bus import table_name
from signalbus.config import channel_setting
from signalbus.triggers import check_signal_triggers

BURST = 1000


class PoisonSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


db = PoisonSQLAlchemy()


def unbuildable(payload: str) -> str | None:
    """Why the message of a row with *payload* cannot be built, or ``None`` if it can."""
    reject_file = os.environ.get("POISON_REJECT_FILE", "")
    if reject_file and os.path.exists(reject_file):
        with open(reject_file) as rejected:
            if payload in rejected.read().splitlines():
                return "is rejected"
    try:
        json.loads(payload)
    except ValueError:
        return "is not JSON"
    return None


def note_rejected(model: Any, rows: Sequence[Any]) -> None:
    """Tell the tests of a rejected burst (``$POISON_REJECTED_FILE``), then take
    ``$POISON_SLOW_SECONDS``."""
    rejected_file = os.environ.get("POISON_REJECTED_FILE")
    if rejected_file:
        line = f"{table_name(model.__table__)} {len(rows)} {os.getpid()}\n"
        fd = os.open(rejected_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    time.sleep(float(os.environ.get("POISON_SLOW_SECONDS", "0")))


class SignalMixin:
    """An id, a JSON payload; sent as the reference app sends its signals, if it can be."""

    routing_key: ClassVar[str]
    signalbus_burst_count: ClassVar[int] = BURST

    id = sa.Column(sa.BigInteger, sa.Identity(), primary_key=True)
    payload = sa.Column(sa.Text, nullable=False, server_default="{}")

    @classmethod
    def send_signalbus_message(cls, row: Any) -> None:
        cls.send_signalbus_messages([row])

    @classmethod
    def send_signalbus_messages(cls, rows: Sequence[Any]) -> None:
        for row in rows:
            problem = unbuildable(row.payload)
            if problem is not None:
                note_rejected(cls, rows)
                message_id = f"{table_name(cls.__table__)}:{row.id}"  # type: ignore[attr-defined]
                raise ValueError(f"cannot build the message of {message_id}: the payload {problem}")
        publish(cls, rows)


class PoisonSignal(SignalMixin, db.Model):
    """The model the tests poison."""

    routing_key = "poison.signal"


class CleanSignal(SignalMixin, db.Model):
    """A model next to it."""

    routing_key = "clean.signal"


def create_app(database_url: str | None = None, config: Mapping[str, Any] | None = None) -> Flask:
    """The app on *database_url* (``$POISON_DATABASE_URL``), configured from the
    environment and then from *config*."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["POISON_DATABASE_URL"]
    app.config.update({key: os.environ[key] for key in os.environ if key.startswith("SIGNALBUS_")})
    app.config.update(config or {})
    db.init_app(app)
    init_publisher(app)
    return app


def create_schema(app: Flask) -> None:
    """Create the signal tables (and the quarantine) and their notification triggers."""
    with app.app_context():
        db.create_all()
        tables = db.signalbus.get_signal_tables()
        check_signal_triggers(db, tables, channel_setting(app.config), install=True)
        db.engine.dispose()
