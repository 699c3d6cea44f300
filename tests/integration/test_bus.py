"""The signal-model registry and the flush routine, on real PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from signalbus import (
    AtomicProceduresMixin,
    NotASignalModelError,
    SignalBus,
    SignalBusError,
    SignalBusMixin,
    get_models_to_flush,
)
from signalbus.conninfo import libpq_conninfo
from signalbus.model import BrokerBlocked
from tests.models import BatchSignal, CompositeSignal, Item, SingleSignal, db, recorder

pytestmark = pytest.mark.usefixtures("app_context")


def insert_rows(model: type, count: int, **columns: Any) -> None:
    db.session.add_all(model(**{k: v(i) for k, v in columns.items()}) for i in range(count))
    db.session.commit()


def row_count(model: type) -> int:
    count = db.session.scalar(sa.select(sa.func.count()).select_from(model))
    db.session.rollback()  # end the REPEATABLE READ snapshot: the next count sees news
    return count


def test_extension_is_registered(app: Flask) -> None:
    assert isinstance(db.signalbus, SignalBus)
    assert app.extensions["signalbus"] is db.signalbus
    assert "signalbus" in app.cli.commands
    assert app.config["SIGNALBUS_CHANNEL"] == "signalbus"


def test_constructor_with_app(database_url: str) -> None:
    class AppDB(SignalBusMixin, SQLAlchemy):
        pass

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app_db = AppDB(app)
    assert app.extensions["signalbus"] is app_db.signalbus
    assert app_db.signalbus.get_signal_models() == []


def test_mixin_after_sqlalchemy_is_rejected() -> None:
    with pytest.raises(TypeError, match="must come before SQLAlchemy"):

        class Wrong(SQLAlchemy, SignalBusMixin):
            pass


@pytest.mark.parametrize("mixin", [SignalBusMixin, AtomicProceduresMixin])
def test_mixin_without_sqlalchemy_is_rejected(mixin: type) -> None:
    class NotSQLAlchemy(mixin):  # type: ignore[valid-type, misc]
        pass

    with pytest.raises(
        TypeError, match=f"NotSQLAlchemy must subclass flask_sqlalchemy.+{mixin.__name__}"
    ):
        NotSQLAlchemy()


def test_atomic_mixin_after_sqlalchemy_is_rejected() -> None:
    with pytest.raises(TypeError, match="AtomicProceduresMixin must come before SQLAlchemy"):

        class Wrong(SQLAlchemy, AtomicProceduresMixin):
            pass


def test_get_signal_models() -> None:
    models = db.signalbus.get_signal_models()
    assert models == [BatchSignal, CompositeSignal, SingleSignal]
    assert Item not in models


def test_a_model_with_only_the_batch_send_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OtherDB(SignalBusMixin, SQLAlchemy):
        pass

    other_db = OtherDB()

    class HalfSignal(other_db.Model):  # type: ignore[name-defined, misc]
        id = sa.Column(sa.Integer, primary_key=True)

        @classmethod
        def send_signalbus_messages(cls, objs: Any) -> None:
            pass

    for _ in range(2):
        assert other_db.signalbus.get_signal_models() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "HalfSignal has send_signalbus_messages but no send_signalbus_message, so it is "
        "not a signal model: define send_signalbus_message too."
    ]


def test_get_models_to_flush(caplog: pytest.LogCaptureFixture) -> None:
    assert get_models_to_flush(db.signalbus, []) == db.signalbus.get_signal_models()
    assert get_models_to_flush(db.signalbus, ["SingleSignal", "Nope"]) == [SingleSignal]
    assert "'Nope' does not exist" in caplog.text


def test_flushmany_sends_and_deletes_everything() -> None:
    insert_rows(SingleSignal, 5, text=lambda i: f"m{i}")
    insert_rows(BatchSignal, 250, payload=str)
    assert db.signalbus.flushmany() == 255
    assert row_count(SingleSignal) == row_count(BatchSignal) == 0
    assert len(recorder.sent) == 255


def test_send_gets_column_values_as_attributes() -> None:
    insert_rows(SingleSignal, 1, text=lambda i: "hello")
    db.signalbus.flushmany([SingleSignal])
    [obj] = recorder.sent
    assert (obj.id, obj.text) == (1, "hello")


def test_batch_send_is_used_for_bursts() -> None:
    insert_rows(BatchSignal, 250, payload=str)
    db.signalbus.flushmany([BatchSignal])
    assert recorder.batches == [100, 100, 50]


def test_single_row_burst_uses_single_send() -> None:
    insert_rows(BatchSignal, 1, payload=str)
    db.signalbus.flushmany([BatchSignal])
    assert recorder.batches == [] and len(recorder.sent) == 1


def test_rows_go_out_in_primary_key_order() -> None:
    db.session.add_all(BatchSignal(id=i, payload="x") for i in (7, 3, 500, 1, 42, 250, 99))
    insert_rows(CompositeSignal, 30, shard=lambda i: i % 3, seqnum=lambda i: 30 - i)
    db.signalbus.flushmany([BatchSignal, CompositeSignal])
    batch_ids = [obj.id for obj in recorder.sent if hasattr(obj, "payload")]
    composite = [(obj.shard, obj.seqnum) for obj in recorder.sent if hasattr(obj, "shard")]
    assert batch_ids == [1, 3, 7, 42, 99, 250, 500]
    assert composite == sorted(composite) and len(composite) == 30


def test_composite_primary_keys() -> None:
    insert_rows(CompositeSignal, 20, shard=lambda i: i % 2, seqnum=int, value=str)
    assert db.signalbus.flushmany([CompositeSignal]) == 20
    assert row_count(CompositeSignal) == 0
    assert recorder.batches == [7, 7, 6]


def test_failing_send_keeps_its_burst_and_propagates() -> None:
    insert_rows(BatchSignal, 250, payload=str)
    recorder.error = ConnectionError("broker down")
    with pytest.raises(ConnectionError, match="broker down"):
        db.signalbus.flushmany([BatchSignal])
    assert row_count(BatchSignal) == 250
    recorder.error = None
    assert db.signalbus.flushmany([BatchSignal]) == 250


def test_a_burst_failing_once_goes_out_in_parts() -> None:
    insert_rows(BatchSignal, 250, payload=str)
    calls = 0
    original = recorder.send_many

    def fail_on_second_burst(objs: Any, batch: bool = True) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("nack")
        original(objs, batch)

    recorder.send_many = fail_on_second_burst  # type: ignore[method-assign]
    try:
        assert db.signalbus.flushmany([BatchSignal]) == 250
    finally:
        del recorder.send_many
    assert row_count(BatchSignal) == 0
    assert sorted(row.id for row in recorder.sent) == list(range(1, 251))
    # The failed burst went out again as its two halves.
    assert recorder.batches == [100, 50, 50, 50]


def test_a_model_whose_every_send_fails_keeps_its_rows() -> None:
    insert_rows(BatchSignal, 250, payload=str)
    recorder.error = RuntimeError("nack")
    with pytest.raises(RuntimeError, match="nack"):
        db.signalbus.flushmany([BatchSignal])
    assert row_count(BatchSignal) == 250
    assert recorder.sent == []


def test_non_signal_model_is_rejected() -> None:
    with pytest.raises(RuntimeError, match="not a signal model") as caught:
        db.signalbus.flushmany([Item])
    assert isinstance(caught.value, NotASignalModelError)
    assert isinstance(caught.value, SignalBusError)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", None, True])
def test_bad_burst_count_is_a_clear_error(bad: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_burst_count", bad)
    with pytest.raises(ValueError, match="positive integer"):
        db.signalbus.flushmany([BatchSignal])


def test_burst_count_may_be_a_class_property(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    class FromConfig:
        def __get__(self, instance: Any, owner: type) -> int:
            return app.config["BATCH_BURST"]

    app.config["BATCH_BURST"] = 40
    monkeypatch.setattr(BatchSignal, "signalbus_burst_count", FromConfig(), raising=False)
    insert_rows(BatchSignal, 100, payload=str)
    db.signalbus.flushmany([BatchSignal])
    assert recorder.batches == [40, 40, 20]


def test_memory_is_bounded_by_the_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    insert_rows(BatchSignal, 1000, payload=str)
    seen: list[int] = []
    monkeypatch.setattr(recorder, "send_many", lambda objs, batch=True: seen.append(len(objs)))
    db.signalbus.flushmany([BatchSignal])
    assert max(seen) == 100 and sum(seen) == 1000


def test_parallel_flushers_send_each_row_exactly_once(app: Flask) -> None:
    total = 10_000
    db.session.execute(
        sa.text("INSERT INTO batch_signal SELECT g, 'p' FROM generate_series(1, :n) g"),
        {"n": total},
    )
    db.session.commit()
    errors: list[BaseException] = []
    counts: list[int] = []
    start = threading.Barrier(2)

    def flush() -> None:
        with app.app_context():
            start.wait()
            try:
                counts.append(db.signalbus.flushmany([BatchSignal]))
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=flush) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [obj.id for obj in recorder.sent]
    assert not errors
    assert sum(counts) == total and min(counts) > 0
    assert len(ids) == total and set(ids) == set(range(1, total + 1))
    assert row_count(BatchSignal) == 0


def test_pipelined_bursts_keep_primary_key_order() -> None:
    ids = list(range(1, 351))
    ids.reverse()
    db.session.add_all(BatchSignal(id=i, payload="x") for i in ids)
    db.session.commit()
    db.signalbus.flushmany([BatchSignal])
    assert [obj.id for obj in recorder.sent] == sorted(ids)
    assert recorder.batches == [100, 100, 100, 50]


def test_a_prefetched_burst_is_rolled_back_once_the_broker_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert_rows(BatchSignal, 300, payload=str)
    checks = iter([False, False, True])  # blocked from the third check on, after the prefetch
    monkeypatch.setattr(
        BatchSignal, "signalbus_blocked", classmethod(lambda cls: next(checks, True)), raising=False
    )
    with pytest.raises(BrokerBlocked):
        db.signalbus.flushmany([BatchSignal])
    assert recorder.batches == [100]
    assert row_count(BatchSignal) == 200


def test_stop_ends_the_flush_between_bursts() -> None:
    insert_rows(BatchSignal, 250, payload=str)
    sent = db.signalbus.flush_model(BatchSignal, stop=lambda: bool(recorder.batches))
    assert sent == 100
    assert row_count(BatchSignal) == 150
    assert db.signalbus.flush_model(BatchSignal, stop=lambda: True) == 0
    assert db.signalbus.flush_model(BatchSignal) == 150


def test_engines_give_up_on_a_dead_peer() -> None:
    driver_connection = db.session.connection().connection.driver_connection
    parameters = driver_connection.info.get_parameters()
    assert parameters["keepalives_idle"] == "15"
    assert parameters["tcp_user_timeout"] == "15000"


def libpq_parameters(**config: Any) -> dict[str, str]:
    """The libpq parameters of a connection of an app configured with *config*."""
    app = Flask(__name__)
    app.config.update(config)
    db.init_app(app)
    with app.app_context(), db.engine.connect() as connection:
        parameters = connection.connection.driver_connection.info.get_parameters()
        db.engine.dispose()
    return parameters


def test_engine_connect_args_win_over_the_tcp_defaults(database_url: str) -> None:
    parameters = libpq_parameters(
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"keepalives_idle": 99}},
    )
    assert parameters["keepalives_idle"] == "99"
    assert parameters["keepalives_count"] == "3"


def test_libpq_settings_in_the_url_win_over_the_defaults(database_url: str) -> None:
    parameters = libpq_parameters(SQLALCHEMY_DATABASE_URI=f"{database_url}?keepalives_idle=300")
    assert parameters["keepalives_idle"] == "300"
    assert parameters["connect_timeout"] == "10"


def kill_flush_connections(database_url: str) -> None:
    """Terminate the backends running a burst statement, as a crash or a network cut would."""
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'DELETE FROM batch_signal%%'"
        )


def test_commit_lost_after_the_send_means_the_rows_go_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(BatchSignal, 50, payload=str)
    original = recorder.send_many

    def send_then_lose_the_connection(objs: Any, batch: bool = True) -> None:
        original(objs, batch)
        kill_flush_connections(database_url)

    monkeypatch.setattr(recorder, "send_many", send_then_lose_the_connection)
    with pytest.raises(sa.exc.OperationalError):
        db.signalbus.flushmany([BatchSignal])
    assert len(recorder.sent) == 50 and row_count(BatchSignal) == 50
    monkeypatch.setattr(recorder, "send_many", original)
    assert db.signalbus.flushmany([BatchSignal]) == 50
    assert row_count(BatchSignal) == 0


def test_failed_send_on_a_dead_connection_reports_the_send_error(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(BatchSignal, 50, payload=str)

    def lose_the_connection_then_fail(objs: Any, batch: bool = True) -> None:
        kill_flush_connections(database_url)
        raise ConnectionError("broker gone too")

    monkeypatch.setattr(recorder, "send_many", lose_the_connection_then_fail)
    with pytest.raises(ConnectionError, match="broker gone too"):
        db.signalbus.flushmany([BatchSignal])
    assert row_count(BatchSignal) == 50
