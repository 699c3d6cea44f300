"""Fixtures of every tier, and the tier markers.

Each test is marked with the tier its directory names: ``unit`` (no server),
``integration`` (PostgreSQL and RabbitMQ) or ``faults`` (servers stopped,
proxies, subprocesses): ``pytest -m unit`` runs only the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.models import db, recorder

pytest_plugins = ["tests.postgres_fixtures", "tests.rabbitmq_fixtures", "tests.rabbitmq_node"]

TIERS = ("unit", "integration", "faults")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.path).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)
    with app.app_context():
        db.create_all()
    recorder.reset()
    yield app
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def app_context(app: Flask) -> Iterator[None]:
    with app.app_context():
        yield
