from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from tests.models import db, recorder

pytest_plugins = ["tests.postgres_fixtures", "tests.rabbitmq_fixtures"]


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
