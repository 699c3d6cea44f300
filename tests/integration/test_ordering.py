"""Ordered signal models: one flusher at a time across sessions, and no isolation."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from signalbus.conninfo import libpq_conninfo
from tests.models import BatchSignal, db, recorder

pytestmark = pytest.mark.usefixtures("app_context")

ORDERED_NAMESPACE = 1935832437


def test_an_ordered_model_is_left_alone_while_another_session_flushes_it(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_ordered", True, raising=False)
    db.session.execute(
        sa.text("INSERT INTO batch_signal (id, payload) SELECT g, 'p' FROM generate_series(1, 5) g")
    )
    db.session.commit()
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as other:
        other.execute(
            "SELECT pg_advisory_lock((%s::bigint << 32) | 'batch_signal'::regclass::oid::bigint)",
            (ORDERED_NAMESPACE,),
        )
        assert db.signalbus.flushmany([BatchSignal]) == 0  # another flusher holds it
        assert recorder.sent == []
    assert db.signalbus.flushmany([BatchSignal]) == 5  # its session ended: the lock went
    assert [row.id for row in recorder.sent] == [1, 2, 3, 4, 5]
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as admin:
        [(held,)] = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (ORDERED_NAMESPACE,),
        ).fetchall()
    assert held == 0  # the flush gave it back
