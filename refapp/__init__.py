"""A reference application of signalbus: orders, whose events go to RabbitMQ.

Configured from environment variables:

``DATABASE_URL``
    The PostgreSQL database (required), e.g. ``postgresql://user@localhost/shop``;
    ``postgresql://`` and ``postgres://`` URLs use the psycopg (3) driver.
``SIGNALBUS_RABBITMQ_URL``
    The broker, e.g. ``amqp://user:password@localhost:5672/%2F``. Unset, messages
    are printed on standard output instead.
``SIGNALBUS_EXCHANGE``, ``SIGNALBUS_BURST_COUNT``
    Optional: the topic exchange the messages go to (``signalbus``; it must
    exist) and the signals sent per burst (1000).
Every other ``SIGNALBUS_*`` key of :mod:`signalbus.config`
    Optional, e.g. ``SIGNALBUS_CHANNEL`` or ``SIGNALBUS_SWEEP_INTERVAL``.

Run it with::

    export DATABASE_URL=postgresql://postgres@127.0.0.1/shop
    flask --app refapp db upgrade          # tables and triggers
    flask --app refapp run                 # POST /orders, POST /orders/<id>/ship
    flask --app refapp signalbus listen    # send the signals as they commit
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.cli import NoAppException
from flask_migrate import Migrate

from signalbus.config import DEFAULT_CONFIG

from .models import BURST_COUNT_KEY, db
from .publishing import EXCHANGE_KEY, init_publisher
from .views import blueprint

__all__ = ["MIGRATIONS_DIRECTORY", "config_from_env", "create_app", "database_uri"]

#: The Flask-Migrate migrations of the app: ``migrations/`` next to this package.
MIGRATIONS_DIRECTORY = Path(__file__).resolve().parent.parent / "migrations"

_ENV_KEYS = (*DEFAULT_CONFIG, EXCHANGE_KEY, BURST_COUNT_KEY)

migrate = Migrate()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the app, configured from the environment and then from *config*."""
    app = Flask(__name__)
    app.config.update(config_from_env(os.environ))
    app.config.update(config or {})
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        raise NoAppException("Set DATABASE_URL, e.g. postgresql://postgres@127.0.0.1/shop")
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIRECTORY))
    init_publisher(app)
    app.register_blueprint(blueprint)
    return app


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the app config given by the environment variables *environ*."""
    config: dict[str, Any] = {key: environ[key] for key in _ENV_KEYS if environ.get(key)}
    if BURST_COUNT_KEY in config:
        config[BURST_COUNT_KEY] = _positive_int(BURST_COUNT_KEY, config)
    if environ.get("DATABASE_URL"):
        config["SQLALCHEMY_DATABASE_URI"] = database_uri(environ["DATABASE_URL"])
    return config


def _positive_int(key: str, config: Mapping[str, str]) -> int:
    try:
        value = int(config[key])
    except ValueError:
        value = 0
    if value < 1:
        raise NoAppException(f"{key} must be a positive integer, not {config[key]!r}")
    return value


def database_uri(url: str) -> str:
    """Return the SQLAlchemy URI of the PostgreSQL database *url*, using psycopg 3.

    Raises :class:`~flask.cli.NoAppException` (without repeating *url*, which
    may hold a password) if *url* is not a PostgreSQL URL.
    """
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed is None or parsed.get_backend_name() != "postgresql":
        raise NoAppException(
            "DATABASE_URL must be a PostgreSQL URL, e.g. postgresql://user:password@host:5432/db"
        )
    return parsed.render_as_string(hide_password=False)
