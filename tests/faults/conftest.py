"""Fixtures of the fault tests: listener processes on a database of their own, and a
virtual host of the session's own RabbitMQ node with a consumer (:mod:`tests.rabbitmq_broker`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from tests import listener_app
from tests.listener_app import db
from tests.listener_processes import Database, ListenerProcess
from tests.proxies import FreezableProxy
from tests.rabbitmq_broker import broker, broker_user, consumer  # noqa: F401 (fixtures)


@pytest.fixture
def flask_app(database_url: str) -> Iterator[Flask]:
    app = listener_app.create_app(database_url)
    listener_app.create_schema(app)
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LISTENER_DATABASE_URL": database_url,
        "LISTENER_SENT_FILE": str(tmp_path / "sent"),
        "LISTENER_FAIL_FILE": str(tmp_path / "fail"),
    }


@pytest.fixture
def database(flask_app: Flask, database_url: str, tmp_path: Path) -> Iterator[Database]:
    database = Database(database_url, tmp_path / "sent")
    yield database
    database.connection.close()


@pytest.fixture
def spawn(env: dict[str, str], flask_app: Flask) -> Iterator[Callable[..., ListenerProcess]]:
    processes: list[ListenerProcess] = []

    def spawn(*args: str, **env_overrides: str) -> ListenerProcess:
        process = ListenerProcess(list(args), {**env, **env_overrides})
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.kill()


@pytest.fixture
def proxy(database_url: str) -> Iterator[FreezableProxy]:
    """A proxy in front of the test server, which the test may freeze or take down."""
    url = make_url(database_url)
    proxy = FreezableProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()
