"""``flask signalbus quarantine``, ``requeue`` and ``purge``, and the quarantined counts of
``pending`` and ``status``: rows get into quarantine through the real flush (a fake send
failing on their ids), in a real PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from signalbus.quarantine import quarantine_table
from tests.integration.test_cli import run_sql, status_json
from tests.models import BatchSignal, CustomSQLAlchemy, db, recorder

#: The payload of every row: never to be printed.
SECRET = "card 4111-1111-1111-1111"

MISSING = "Error: The quarantine table signalbus_quarantine is missing in postgresql+psycopg://"


Invoke = Callable[..., Result]


def invoker(app: Flask) -> Invoke:
    """``invoke("quarantine", "--json")`` runs ``flask signalbus quarantine --json`` in *app*."""
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["signalbus", *args])


@pytest.fixture
def invoke(app: Flask) -> Invoke:
    return invoker(app)


def quarantine(app: Flask, *bad: int, rows: int = 300) -> None:
    """Insert BatchSignal rows 1 to *rows* and flush them, the *bad* ones failing each time:
    those end in quarantine (5 attempts each), the others are sent."""
    with app.app_context():
        db.session.execute(
            sa.text(
                "INSERT INTO batch_signal (id, payload)"
                " SELECT g, :payload || g FROM generate_series(1, :rows) g"
            ),
            {"payload": SECRET, "rows": rows},
        )
        db.session.commit()
        recorder.bad.update(bad)
        db.signalbus.flushmany([BatchSignal])
        recorder.sent.clear()


def pending_ids(app: Flask) -> list[int]:
    with app.app_context():
        return list(db.session.scalars(sa.select(BatchSignal.id).order_by(BatchSignal.id)))


def quarantined(app: Flask) -> dict[int, int]:
    """The quarantine's ids of the rows in quarantine, by the row's id."""
    with app.app_context():
        records = db.session.execute(
            sa.text(
                "SELECT id, (row_key->>'id')::int FROM signalbus_quarantine"
                " WHERE quarantined_at IS NOT NULL"
            )
        )
        return {row_id: record_id for record_id, row_id in records}


def lines(result: Result) -> list[str]:
    return result.output.splitlines()


def refusal(result: Result) -> str:
    """The message of a usage error (exit status 2): its last line, after click's usage."""
    assert result.exit_code == 2, result.output
    return lines(result)[-1]


def test_quarantine_lists_the_rows_by_signal_and_never_their_values(
    app: Flask, invoke: Invoke
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    quarantine(app, 150, 250)
    records = quarantined(app)
    result = invoke("quarantine")
    assert result.exit_code == 0, result.output
    header, first, second = lines(result)
    assert header == "BatchSignal (batch_signal): 2 quarantined"
    time = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\+00:00"
    for line, row_id in [(first, 150), (second, 250)]:
        match = re.fullmatch(
            rf"  #{records[row_id]} id={row_id}, 5 attempts \(first failed {time}, last {time}\),"
            rf" quarantined {time}: ValueError: cannot build the message of row {row_id}",
            line,
        )
        assert match, line
        moments = [datetime.fromisoformat(f"{moment}+00:00") for moment in match.groups()]
        assert before <= moments[0] <= moments[1] <= moments[2] < before + timedelta(minutes=5)
    assert SECRET not in result.output


def test_quarantine_json_is_one_document_of_every_signal(app: Flask, invoke: Invoke) -> None:
    quarantine(app, 150)
    result = invoke("quarantine", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert list(document) == ["signals"]
    signals = {signal.pop("name"): signal for signal in document["signals"]}
    assert list(signals) == ["BatchSignal", "CompositeSignal", "SingleSignal"]
    assert signals["SingleSignal"] == {"table": "single_signal", "rows": []}
    [row] = signals["BatchSignal"].pop("rows")
    assert signals["BatchSignal"] == {"table": "batch_signal"}
    times = {key: datetime.fromisoformat(row.pop(key)) for key in list(row) if key.endswith("_at")}
    assert list(times) == ["first_failed_at", "last_failed_at", "quarantined_at"]
    assert all(moment.utcoffset() == timedelta(0) for moment in times.values())
    assert times["first_failed_at"] < times["last_failed_at"] <= times["quarantined_at"]
    assert row == {
        "id": quarantined(app)[150],
        "row_key": {"id": 150},
        "attempts": 5,
        "last_error": "ValueError: cannot build the message of row 150",
    }
    assert SECRET not in result.output


def test_quarantine_shows_only_the_named_signals(app: Flask, invoke: Invoke) -> None:
    quarantine(app, 150)
    result = invoke("quarantine", "SingleSignal")
    assert (result.exit_code, result.output) == (0, "No rows in quarantine.\n")
    document = json.loads(invoke("quarantine", "SingleSignal", "--json").output)
    assert document == {"signals": [{"name": "SingleSignal", "table": "single_signal", "rows": []}]}
    assert lines(invoke("quarantine", "BatchSignal"))[0].startswith("BatchSignal (batch_signal)")


def test_quarantine_says_so_when_empty(invoke: Invoke) -> None:
    result = invoke("quarantine")
    assert (result.exit_code, result.output) == (0, "No rows in quarantine.\n")


@pytest.mark.parametrize(
    "args",
    [
        ("quarantine", "NoSuchSignal"),
        ("requeue", "BatchSignal", "NoSuchSignal"),
        ("purge", "NoSuchSignal", "--yes"),
    ],
)
def test_an_unknown_signal_is_a_usage_error(
    app: Flask, invoke: Invoke, args: tuple[str, ...]
) -> None:
    quarantine(app, 150)
    assert refusal(invoke(*args)).startswith("Error: Unknown signal NoSuchSignal.")
    assert list(quarantined(app)) == [150]


def test_requeue_puts_the_row_back_with_its_id_and_a_later_flush_sends_it(
    app: Flask, invoke: Invoke
) -> None:
    quarantine(app, 150, 250)
    records = quarantined(app)
    result = invoke("requeue", "--id", str(records[150]))
    assert (result.exit_code, result.output) == (0, "Requeued 1 row.\n")
    assert pending_ids(app) == [150]
    assert list(quarantined(app)) == [250]
    with app.app_context():
        assert db.session.get(BatchSignal, 150).payload == f"{SECRET}150"
    recorder.bad.clear()  # the cause is gone
    assert invoke("requeue", "BatchSignal").output == "Requeued 1 row.\n"
    with app.app_context():
        db.signalbus.flushmany([BatchSignal])
    assert [row.id for row in recorder.sent] == [150, 250]
    assert quarantined(app) == {}


def test_requeue_all_and_a_taken_key_stays_in_quarantine_exit_1(app: Flask, invoke: Invoke) -> None:
    quarantine(app, 150, 250)
    records = quarantined(app)
    run_sql(app, "INSERT INTO batch_signal (id, payload) VALUES (150, 'new')")
    result = invoke("requeue", "--all")
    assert result.exit_code == 1
    assert lines(result) == [
        "Requeued 1 row.",
        f"#{records[150]} BatchSignal id=150: its key is taken; it stays in quarantine",
    ]
    assert pending_ids(app) == [150, 250]
    assert list(quarantined(app)) == [150]
    with app.app_context():
        assert db.session.get(BatchSignal, 150).payload == "new"


def test_requeue_of_ids_not_in_quarantine_is_a_usage_error_and_requeues_nothing(
    app: Flask, invoke: Invoke
) -> None:
    quarantine(app, 150)
    record = quarantined(app)[150]
    result = invoke("requeue", "--id", str(record), "--id", "9999", "--id", "9998")
    assert refusal(result) == "Error: No quarantined row #9998, #9999; nothing was requeued."
    result = invoke("requeue", "SingleSignal", "--id", str(record))  # a row of another signal
    assert refusal(result) == (
        f"Error: No quarantined row #{record} of SingleSignal; nothing was requeued."
    )
    assert pending_ids(app) == []
    assert list(quarantined(app)) == [150]


@pytest.mark.parametrize("command", [("requeue",), ("purge", "--yes")])
def test_requeue_and_purge_want_names_ids_or_all(
    app: Flask, invoke: Invoke, command: tuple[str, ...]
) -> None:
    quarantine(app, 150)
    assert refusal(invoke(*command)) == "Error: give signal names, --id or --all"
    result = invoke(*command, "--all", "--id", str(quarantined(app)[150]))
    assert refusal(result) == "Error: give --id or --all, not both"
    assert list(quarantined(app)) == [150] and pending_ids(app) == []


def test_purge_wants_yes_and_then_deletes_for_good(app: Flask, invoke: Invoke) -> None:
    quarantine(app, 150, 250, 260)
    records = quarantined(app)
    assert refusal(invoke("purge", "--all")) == "Error: purge deletes rows for good; add --yes"
    assert len(quarantined(app)) == 3
    result = invoke("purge", "--id", str(records[150]), "--yes")
    assert (result.exit_code, result.output) == (0, "Purged 1 row.\n")
    assert sorted(quarantined(app)) == [250, 260]
    assert refusal(invoke("purge", "--id", str(records[150]), "--yes")) == (
        f"Error: No quarantined row #{records[150]}; nothing was purged."
    )
    result = invoke("purge", "SingleSignal", "--yes")
    assert (result.exit_code, result.output) == (0, "Purged 0 rows.\n")
    result = invoke("purge", "BatchSignal", "--yes")
    assert (result.exit_code, result.output) == (0, "Purged 2 rows.\n")
    assert quarantined(app) == {} and pending_ids(app) == []


@pytest.mark.parametrize(
    "args",
    [("quarantine",), ("quarantine", "--json"), ("requeue", "--all"), ("purge", "--all", "--yes")],
)
def test_a_missing_quarantine_table_is_one_line_exit_1(
    app: Flask, invoke: Invoke, args: tuple[str, ...]
) -> None:
    run_sql(app, "DROP TABLE signalbus_quarantine")
    result = invoke(*args)
    assert result.exit_code == 1
    [line] = lines(result)
    assert line.startswith(MISSING)
    assert line.endswith(" (hint: flask db upgrade, or flask signalbus triggers --install)")


def test_pending_shows_the_quarantined_count(app: Flask, invoke: Invoke) -> None:
    quarantine(app, 150, 250)
    run_sql(app, "INSERT INTO batch_signal (id, payload) VALUES (1, 'x'), (2, 'y'), (3, 'z')")
    result = invoke("pending")
    assert result.exit_code == 0
    assert lines(result) == [
        "BatchSignal: 3 (2 quarantined)",
        "CompositeSignal: 0",
        "SingleSignal: 0",
        "Total pending: 3",
    ]
    run_sql(app, "DROP TABLE signalbus_quarantine")
    result = invoke("pending")
    assert result.exit_code == 0
    assert lines(result)[0] == "BatchSignal: 3"


def test_status_shows_the_quarantined_count(app: Flask, invoke: Invoke) -> None:
    assert invoke("triggers", "--install").exit_code == 0
    quarantine(app, 150, 250)
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert lines(result)[:2] == [
        "BatchSignal: 0 pending, 2 quarantined, oldest -, trigger installed",
        "CompositeSignal: 0 pending, oldest -, trigger installed",
    ]
    signals = status_json(invoke("status", "--json"))
    assert [signals[name]["quarantined"] for name in signals] == [2, 0, 0]
    run_sql(app, "DROP TABLE signalbus_quarantine")
    assert lines(invoke("status"))[0] == "BatchSignal: 0 pending, oldest -, trigger installed"
    signals = status_json(invoke("status", "--json"))
    assert signals["BatchSignal"]["quarantined"] is None


# Two databases: models on two binds, each database with its own quarantine, whose ids
# start at 1 in each. The "other" bind is the same PostgreSQL database, but its search_path
# is the schema "other": its tables, the quarantine's included, are that schema's.

other_db = CustomSQLAlchemy()


class Alpha(other_db.Model):  # type: ignore[name-defined,misc]
    """A signal of the default database."""

    __tablename__ = "alpha_signal"
    id = other_db.Column(other_db.Integer, primary_key=True)
    payload = other_db.Column(other_db.Text, nullable=False)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        recorder.send_one(obj)


class Beta(other_db.Model):  # type: ignore[name-defined,misc]
    """A signal of the other database; jsonb orders its key's columns n, region_code."""

    __tablename__ = "beta_signal"
    __bind_key__ = "other"
    signalbus_burst_count: ClassVar[int] = 4
    region_code = other_db.Column(other_db.Text, primary_key=True)
    n = other_db.Column(other_db.Integer, primary_key=True)
    payload = other_db.Column(other_db.Text, nullable=False)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        if obj.n in recorder.bad:
            raise ValueError(f"cannot build the message of row n={obj.n}")
        recorder.send_one(obj)


@pytest.fixture
def two_databases(database_url: str) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_BINDS"] = {"other": f"{database_url}?options=-csearch_path%3Dother"}
    other_db.init_app(app)
    with app.app_context():
        with other_db.engine.begin() as connection:
            connection.exec_driver_sql("CREATE SCHEMA other")
        other_db.create_all()  # the quarantine table only in the default database
        for n in range(1, 11):
            other_db.session.add_all(
                [Alpha(id=n, payload=SECRET), Beta(region_code="eu", n=n, payload=SECRET)]
            )
        other_db.session.commit()
    recorder.reset()
    yield app
    with app.app_context():
        other_db.session.remove()
        for engine in other_db.engines.values():
            engine.dispose()


def test_each_database_has_its_quarantine(two_databases: Flask) -> None:
    app = two_databases
    run = invoker(app)
    result = run("quarantine")
    assert result.exit_code == 1
    assert result.output.startswith(MISSING) and "search_path" in result.output
    with app.app_context(), other_db.engines["other"].begin() as connection:
        quarantine_table(sa.MetaData()).create(connection)  # as triggers --install does
    recorder.bad.update({3})
    with app.app_context():
        other_db.signalbus.flushmany()
    result = run("quarantine")
    assert result.exit_code == 0, result.output
    assert [line.split(", ")[0] for line in lines(result)] == [
        "Alpha (alpha_signal): 1 quarantined",
        "  #1 id=3",
        "Beta (beta_signal): 1 quarantined",
        '  #1 region_code="eu" n=3',
    ]
    assert SECRET not in result.output
    assert refusal(run("requeue", "--id", "1")) == (
        "Error: #1: a quarantined row in more than one database (name its signal);"
        " nothing was requeued."
    )
    assert run("requeue", "Beta", "--id", "1").output == "Requeued 1 row.\n"
    with app.app_context():
        assert other_db.session.execute(sa.select(Beta.region_code, Beta.n)).all() == [("eu", 3)]
        assert other_db.session.scalars(sa.select(Alpha.id)).all() == []
    assert run("purge", "--all", "--yes").output == "Purged 1 row.\n"
    assert run("quarantine").output == "No rows in quarantine.\n"
