"""Isolating bad rows and the quarantine: real PostgreSQL, a fake send that fails on some rows."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from signalbus.quarantine import list_quarantined, purge, requeue, table_key
from signalbus.rabbitmq import ConnectionFailed
from tests.models import BatchSignal, SingleSignal, db, recorder

pytestmark = pytest.mark.usefixtures("app_context")


def insert(count: int, first: int = 1) -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO batch_signal (id, payload)"
            " SELECT g, 'payload ' || g FROM generate_series(CAST(:first AS bigint), :last) g"
        ),
        {"first": first, "last": first + count - 1},
    )
    db.session.commit()


def pending() -> list[int]:
    ids = db.session.scalars(sa.select(BatchSignal.id).order_by(BatchSignal.id)).all()
    db.session.rollback()
    return list(ids)


def quarantine_records() -> list[tuple[Any, ...]]:
    rows = db.session.execute(
        sa.text(
            "SELECT signal_table, row_key, attempts, last_error, quarantined_at IS NOT NULL"
            " FROM signalbus_quarantine ORDER BY id"
        )
    ).all()
    db.session.rollback()
    return [tuple(row) for row in rows]


def sent_ids() -> list[int]:
    return sorted(row.id for row in recorder.sent)


def test_one_bad_row_is_quarantined_after_max_attempts_and_the_others_go_out() -> None:
    insert(1000)
    recorder.bad.add(150)
    assert db.signalbus.flushmany([BatchSignal]) == 999
    assert sent_ids() == [i for i in range(1, 1001) if i != 150]  # each once
    assert pending() == []
    assert recorder.tried_alone[150] == 5
    assert quarantine_records() == [
        ("batch_signal", {"id": 150}, 5, "ValueError: cannot build the message of row 150", True)
    ]


def test_max_attempts_comes_from_the_model_or_the_config(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.config["SIGNALBUS_MAX_ATTEMPTS"] = 2
    insert(10)
    recorder.bad.add(3)
    db.signalbus.flushmany([BatchSignal])
    assert quarantine_records()[0][2] == 2
    monkeypatch.setattr(BatchSignal, "signalbus_max_attempts", 4, raising=False)
    insert(1, first=11)
    recorder.bad.add(11)
    insert(1, first=12)
    db.signalbus.flushmany([BatchSignal])
    assert [record[2] for record in quarantine_records()] == [2, 4]


def test_attempts_survive_an_isolation_cut_short() -> None:
    insert(10)
    recorder.bad.add(5)
    original = recorder.send_many

    def die_on_the_third_try(objs: Any, batch: bool = True) -> None:
        if [obj.id for obj in objs] == [5] and recorder.tried_alone[5] == 2:
            raise KeyboardInterrupt  # the process dies mid-isolation
        original(objs, batch)

    recorder.send_many = die_on_the_third_try  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            db.signalbus.flushmany([BatchSignal])
    finally:
        del recorder.send_many
    assert pending() == [5]
    assert quarantine_records() == [
        ("batch_signal", {"id": 5}, 2, "ValueError: cannot build the message of row 5", False)
    ]
    insert(1, first=11)  # evidence again: another row that goes out
    db.signalbus.flushmany([BatchSignal])
    assert pending() == []
    assert quarantine_records()[0][2:] == (5, "ValueError: cannot build the message of row 5", True)
    assert recorder.tried_alone[5] == 5
    assert sent_ids() == [i for i in range(1, 12) if i != 5]


def test_an_outage_quarantines_nothing_and_counts_no_attempt() -> None:
    insert(300)
    recorder.error = ConnectionFailed("cannot connect to RabbitMQ: refused")
    with pytest.raises(ConnectionFailed):
        db.signalbus.flushmany([BatchSignal])
    assert len(pending()) == 300
    assert quarantine_records() == []


def test_when_every_row_fails_the_failure_is_the_models() -> None:
    insert(300)
    recorder.error = ValueError("the message template is broken")
    with pytest.raises(ValueError, match="template"):
        db.signalbus.flushmany([BatchSignal])
    assert len(pending()) == 300
    assert quarantine_records() == []


def test_a_lone_bad_row_counts_only_once_another_row_went_out() -> None:
    insert(1, first=7)
    recorder.bad.add(7)
    with pytest.raises(ValueError):
        db.signalbus.flushmany([BatchSignal])
    assert quarantine_records() == []  # no evidence: the failure may be the model's
    insert(1, first=8)
    db.signalbus.flushmany([BatchSignal])
    assert sent_ids() == [8]
    assert quarantine_records()[0][:3] == ("batch_signal", {"id": 7}, 5)


def test_a_row_that_fails_once_and_then_goes_leaves_no_record() -> None:
    insert(20)
    original = recorder.send_many
    failed: collections.Counter[int] = collections.Counter()

    def fail_row_4_once(objs: Any, batch: bool = True) -> None:
        if any(obj.id == 4 for obj in objs) and failed[4] < 2:
            failed[4] += 1
            raise ValueError("hiccup")
        original(objs, batch)

    recorder.send_many = fail_row_4_once  # type: ignore[method-assign]
    try:
        assert db.signalbus.flushmany([BatchSignal]) == 20
    finally:
        del recorder.send_many
    assert quarantine_records() == []


def test_an_ordered_model_holds_the_rows_behind_a_failing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_ordered", True, raising=False)
    insert(300)
    recorder.bad.add(150)
    with pytest.raises(ValueError):
        db.signalbus.flushmany([BatchSignal])
    assert sent_ids() == list(range(1, 101))
    assert pending() == list(range(101, 301))
    assert quarantine_records() == []


def test_requeue_puts_the_row_back_exactly_and_purge_deletes() -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO batch_signal (id, payload, inserted_at) VALUES"
            " (1, 'fine', now()),"
            " (2, 'bad ''quoted'' \\\\ payload', '2026-01-02 03:04:05.123456+00'),"
            " (3, 'bad too', now())"
        )
    )
    db.session.commit()
    before = db.session.execute(sa.text("SELECT * FROM batch_signal WHERE id = 2")).one()
    db.session.rollback()
    recorder.bad.update({2, 3})
    db.signalbus.flushmany([BatchSignal])
    assert pending() == []
    tables = {table_key(BatchSignal): BatchSignal, table_key(SingleSignal): SingleSignal}
    with db.engine.begin() as connection:
        two, three = sorted(list_quarantined(connection), key=lambda row: row.row_key["id"])
        result = requeue(connection, tables, ids=[two.id])
    assert result.done == [two.id] and result.conflicts == []
    after = db.session.execute(sa.text("SELECT * FROM batch_signal WHERE id = 2")).one()
    db.session.rollback()
    assert after == before
    recorder.bad.clear()
    db.signalbus.flushmany([BatchSignal])
    assert [row.id for row in recorder.sent] == [1, 2]
    insert(1, first=3)  # the key of the other quarantined row is taken again
    with db.engine.begin() as connection:
        result = requeue(connection, tables)
    assert result.done == [] and [row.id for row in result.conflicts] == [three.id]
    with db.engine.begin() as connection:
        assert purge(connection, ids=[three.id]) == 1
        assert list_quarantined(connection) == []


def test_a_bad_row_first_in_a_big_burst_is_isolated_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every first half of its burst fails: ten levels of halving before a part goes out.
    monkeypatch.setattr(BatchSignal, "signalbus_burst_count", 1000)
    insert(2000)
    recorder.bad.add(1001)
    assert db.signalbus.flushmany([BatchSignal]) == 1999
    assert quarantine_records()[0][:3] == ("batch_signal", {"id": 1001}, 5)


def test_several_bad_rows_spread_through_a_burst_are_all_isolated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_burst_count", 1000)
    insert(1000)
    bad = set(range(50, 1000, 100))  # one in every tenth of the burst
    recorder.bad.update(bad)
    assert db.signalbus.flushmany([BatchSignal]) == 990
    assert {record[1]["id"] for record in quarantine_records()} == bad
