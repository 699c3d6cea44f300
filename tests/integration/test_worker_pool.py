"""The listener's worker pool: many models, few threads and connections, no pool waits."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from signalbus import SignalBusMixin
from signalbus.conninfo import libpq_conninfo
from signalbus.listener import Listener
from signalbus.triggers import check_signal_triggers
from tests.waiting import wait_until

MODELS = 20
ROWS = 300
WORKERS = 3


class PoolSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


class Sent:
    """The ids sent per model, and the threads that sent them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.threads: set[str] = set()
        #: Each model's first send: the counts of every model at that moment.
        self.firsts: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()

    def record(self, model: type, rows: list[Any]) -> None:
        with self._lock:
            self.firsts.setdefault(model.__name__, self.counts.copy())
            self.counts[model.__name__] += len(rows)
            self.threads.add(threading.current_thread().name)

    def count(self, model: type) -> int:
        with self._lock:
            return self.counts[model.__name__]

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def make_models(db: SQLAlchemy, sent: Sent) -> list[type]:
    def send_many(cls: type, rows: list[Any]) -> None:
        sent.record(cls, rows)

    def send_one(cls: type, row: Any) -> None:
        sent.record(cls, [row])

    return [
        type(
            f"PoolSignal{number}",
            (db.Model,),
            {
                "__tablename__": f"pool_signal_{number}",
                "id": sa.Column(sa.BigInteger, primary_key=True),
                "signalbus_burst_count": 100,
                "send_signalbus_message": classmethod(send_one),
                "send_signalbus_messages": classmethod(send_many),
            },
        )
        for number in range(MODELS)
    ]


@pytest.fixture
def pool_app(database_url: str) -> Iterator[tuple[Flask, PoolSQLAlchemy, list[type], Sent]]:
    db = PoolSQLAlchemy()
    sent = Sent()
    models = make_models(db, sent)
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    # The smallest pool there is: flushes must not depend on it.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 2}
    db.init_app(app)
    with app.app_context():
        db.create_all()
        check_signal_triggers(db, db.signalbus.get_signal_tables(), "signalbus", install=True)
    yield app, db, models, sent
    with app.app_context():
        db.engine.dispose()


def listener_backends(database_url: str) -> int:
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def backend_queries(database_url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as admin:
        return admin.execute(
            "SELECT application_name, state, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()


def test_a_backlog_of_many_models_drains_on_a_few_threads_and_connections(
    pool_app: tuple[Flask, PoolSQLAlchemy, list[type], Sent], database_url: str
) -> None:
    app, db, models, sent = pool_app
    with app.app_context(), db.engine.begin() as connection:
        for model in models:
            connection.execute(
                sa.text(f"INSERT INTO {model.__tablename__} (id) SELECT generate_series(1, :n)"),
                {"n": ROWS},
            )
        listener = Listener(db.signalbus, sweep_interval=3600, workers=WORKERS)
    before = set(threading.enumerate())
    thread = threading.Thread(target=listener.run)
    thread.start()
    peak_threads = peak_backends = 0
    try:

        def drained() -> bool:
            nonlocal peak_threads, peak_backends
            peak_threads = max(peak_threads, len(set(threading.enumerate()) - before))
            peak_backends = max(peak_backends, listener_backends(database_url))
            return sent.total() >= MODELS * ROWS

        wait_until(drained, timeout=60, what=f"{MODELS * ROWS} rows to be sent")
    finally:
        listener.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert sent.counts == {model.__name__: ROWS for model in models}
    assert {name for name in sent.threads} <= {f"signalbus-worker-{n}" for n in range(1, 4)}
    # The run() thread, the workers and their prefetching threads; never one per model.
    assert peak_threads <= 1 + 2 * WORKERS
    # LISTEN and two per worker (a sweep runs on a worker's own connection).
    assert peak_backends <= 1 + 2 * WORKERS


def test_a_fresh_row_of_one_model_overtakes_the_backlog_of_another(
    pool_app: tuple[Flask, PoolSQLAlchemy, list[type], Sent],
) -> None:
    app, db, models, sent = pool_app
    backlog, fresh = models[0], models[1]
    with app.app_context():
        with db.engine.begin() as connection:
            connection.execute(
                sa.text(
                    f"INSERT INTO {backlog.__tablename__} (id) SELECT generate_series(1, 20000)"
                )
            )
        listener = Listener(db.signalbus, [backlog, fresh], sweep_interval=3600, workers=1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        wait_until(lambda: sent.count(backlog) > 0, what="the backlog to start")
        with app.app_context(), db.engine.begin() as connection:
            connection.execute(sa.text(f"INSERT INTO {fresh.__tablename__} (id) VALUES (1)"))
        committed_after = sent.count(backlog)
        wait_until(lambda: sent.count(fresh) == 1, what="the fresh row")
    finally:
        listener.stop()
        thread.join(10)
    between = sent.firsts[fresh.__name__][backlog.__name__] - committed_after
    # One worker, bursts of 100: the fresh row waits for a few bursts, not for the
    # (up to 20,000 rows of) backlog left when it committed.
    assert between <= 2000, f"{between} backlog rows went out before the fresh row"


def test_an_idle_worker_releases_its_connections(
    pool_app: tuple[Flask, PoolSQLAlchemy, list[type], Sent], database_url: str
) -> None:
    app, db, models, sent = pool_app
    model = models[0]
    released: list[str] = []
    model.signalbus_release = classmethod(  # type: ignore[attr-defined]
        lambda cls: released.append(threading.current_thread().name)
    )
    with app.app_context():
        listener = Listener(db.signalbus, [model], sweep_interval=3600, workers=1, idle_release=0.5)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        assert listener.ready.wait(10)
        with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as producer:
            # Not through the app's pool, whose connection would stay open.
            producer.execute(f"INSERT INTO {model.__tablename__} (id) VALUES (1)".encode())
        wait_until(lambda: sent.count(model) == 1, what="the row")
        wait_until(lambda: released, what="the idle worker to release")
        assert released == ["signalbus-worker-1"]
        wait_until(
            lambda: listener_backends(database_url) == 1,
            what=lambda: f"only LISTEN to stay: {backend_queries(database_url)}",
        )
    finally:
        listener.stop()
        thread.join(10)
