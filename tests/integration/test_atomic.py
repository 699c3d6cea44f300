"""Atomic procedures and model utilities, on real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import IntegrityError

from signalbus import DBSerializationError, retry_on_deadlock
from signalbus.conninfo import libpq_conninfo
from tests.models import CompositeSignal, Item, db

pytestmark = pytest.mark.usefixtures("app_context")


def add_item(name: str) -> Item:
    item = Item(name=name)
    db.session.add(item)
    db.session.commit()
    return item


def test_isolation_level_defaults_to_repeatable_read() -> None:
    level = db.session.execute(sa.text("SHOW transaction_isolation")).scalar_one()
    assert level == "repeatable read"


def test_explicit_isolation_level_is_kept(database_url: str) -> None:
    from tests.models import CustomSQLAlchemy

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    other = CustomSQLAlchemy(app, engine_options={"isolation_level": "SERIALIZABLE"})
    with app.app_context():
        level = other.session.execute(sa.text("SHOW transaction_isolation")).scalar_one()
        other.session.remove()
        other.engine.dispose()
    assert level == "serializable"


def test_atomic_commits_and_expunges() -> None:
    @db.atomic
    def create() -> Item:
        item = Item(name="a")
        db.session.add(item)
        return item

    item = create()
    assert item not in db.session
    assert db.session.scalar(sa.select(Item.name)) == "a"


def test_atomic_rolls_back_on_error() -> None:
    @db.atomic
    def fail() -> None:
        db.session.add(Item(name="b"))
        db.session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fail()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Item)) == 0


def test_execute_atomic_binds_the_result() -> None:
    @db.execute_atomic
    def answer() -> int:
        return db.session.execute(sa.text("SELECT 42")).scalar_one()

    assert answer == 42


def test_nested_atomic_blocks_share_one_transaction() -> None:
    @db.atomic
    def inner() -> None:
        db.session.add(Item(name="inner"))

    @db.atomic
    def outer() -> None:
        inner()
        raise ValueError("rollback all")

    with pytest.raises(ValueError):
        outer()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Item)) == 0


def test_atomic_reruns_after_a_real_serialization_failure(database_url: str) -> None:
    """Two REPEATABLE READ transactions update one row: the loser is re-run."""
    item_id = add_item("contended").id
    conninfo = libpq_conninfo(database_url)
    snapshot_taken = threading.Event()
    rival_committed = threading.Event()
    attempts = 0

    def rival() -> None:
        snapshot_taken.wait(timeout=10)
        with psycopg.connect(conninfo) as conn:
            conn.execute("UPDATE item SET name = 'rival' WHERE id = %s", (item_id,))
        rival_committed.set()

    @db.atomic
    def rename() -> None:
        nonlocal attempts
        attempts += 1
        db.session.execute(sa.text("SELECT 1"))  # takes the snapshot
        if attempts == 1:
            snapshot_taken.set()
            rival_committed.wait(timeout=10)
        db.session.execute(sa.update(Item).where(Item.id == item_id).values(name="mine"))

    thread = threading.Thread(target=rival)
    thread.start()
    rename()
    thread.join()
    assert attempts == 2
    assert db.session.scalar(sa.select(Item.name)) == "mine"


def test_retry_on_integrity_error_reruns_the_block() -> None:
    add_item("taken")
    attempts = 0

    @db.atomic
    def create_unique() -> str:
        nonlocal attempts
        attempts += 1
        name = "taken" if attempts == 1 else "free"
        with db.retry_on_integrity_error():
            db.session.add(Item(name=name))
        return name

    assert create_unique() == "free"
    assert attempts == 2


def test_retry_on_integrity_error_outside_atomic_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside an atomic block"), db.retry_on_integrity_error():
        pass


def test_integrity_error_without_the_context_manager_propagates() -> None:
    add_item("dup")

    @db.atomic
    def duplicate() -> None:
        db.session.add(Item(name="dup"))

    with pytest.raises(IntegrityError):
        duplicate()


def test_atomic_gives_up_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("signalbus.atomic.time.sleep", lambda seconds: None)
    attempts = 0

    @db.atomic
    def always_loses() -> None:
        nonlocal attempts
        attempts += 1
        raise DBSerializationError("lost")

    with pytest.raises(DBSerializationError):
        always_loses()
    assert attempts == 7


def test_retry_on_deadlock_leaves_other_errors_alone() -> None:
    calls = 0

    @retry_on_deadlock(db.session)
    def fails() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("x")

    with pytest.raises(KeyError):
        fails()
    assert calls == 1


def test_get_instance() -> None:
    item = add_item("x")
    assert Item.get_instance(item.id) is item
    assert Item.get_instance(item) is item
    db.session.expunge(item)
    loaded = Item.get_instance(item)
    assert loaded is not item and loaded.name == "x"
    assert Item.get_instance(12345) is None
    assert Item.get_instance(item.id, sa.orm.load_only(Item.name)).id == item.id


def test_get_instance_with_composite_key() -> None:
    db.session.add(CompositeSignal(shard=1, seqnum=2, value="v"))
    db.session.commit()
    assert CompositeSignal.get_instance((1, 2)).value == "v"
    assert CompositeSignal.get_instance((2, 1)) is None


def test_lock_instance_selects_for_update(database_url: str) -> None:
    item = add_item("locked")
    assert Item.lock_instance(item.id) is item
    conninfo = libpq_conninfo(database_url)
    with psycopg.connect(conninfo) as other:
        other.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT 1 FROM item WHERE id = %s FOR UPDATE", (item.id,))
    db.session.rollback()
    assert Item.lock_instance(999) is None


def test_lock_instance_passes_options_to_for_update(database_url: str) -> None:
    item = add_item("busy")
    conninfo = libpq_conninfo(database_url)
    with psycopg.connect(conninfo) as other:
        other.execute("SELECT 1 FROM item WHERE id = %s FOR UPDATE", (item.id,))
        assert Item.lock_instance(item.id, skip_locked=True) is None
        with pytest.raises(sa.exc.OperationalError, match="could not obtain lock"):
            Item.lock_instance(item.id, nowait=True)
    db.session.rollback()


def test_get_pk_values() -> None:
    item = Item(name="pending")
    db.session.add(item)
    assert Item.get_pk_values(item) == (item.id,)
    assert item.id is not None
    assert Item.get_pk_values(5) == (5,)
    assert CompositeSignal.get_pk_values((1, 2)) == (1, 2)
