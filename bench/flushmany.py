"""Benchmark: ``flushmany`` against a bare psycopg loop running the same bursts.

    python -m bench.flushmany [--rows 100000] [--rounds 5]

Each round fills a signal table with ``--rows`` rows and drains it twice: once
with a bare psycopg loop of ``DELETE ... RETURNING`` bursts of 1000 rows, once
with ``SignalBus.flushmany`` (burst 1000, a no-op batch send); the table is
truncated and filled afresh before each drain. It prints both rates per round,
their medians and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, ClassVar

import psycopg
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.database import bench_database
from signalbus import SignalBusMixin
from signalbus.conninfo import libpq_conninfo

BURST = 1000


class BenchSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


db = BenchSQLAlchemy()


class BenchSignal(db.Model):
    signalbus_burst_count: ClassVar[int] = BURST

    id = db.Column(db.BigInteger, primary_key=True)
    exchange = db.Column(db.String(100), nullable=False)
    routing_key = db.Column(db.String(100), nullable=False)
    payload = db.Column(db.Text, nullable=False)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        pass

    @classmethod
    def send_signalbus_messages(cls, objs: Any) -> None:
        pass


FILL = sa.text(
    "INSERT INTO bench_signal (id, exchange, routing_key, payload) "
    "SELECT g, 'events', 'bench.signal', repeat('x', 200) FROM generate_series(1, :rows) g"
)
BARE_BURST = (
    "DELETE FROM bench_signal WHERE id IN (SELECT id FROM bench_signal ORDER BY id "
    "LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, exchange, routing_key, payload"
)


def fill(rows: int) -> None:
    """Fill the table afresh: every drain starts from the same heap and index layout."""
    with db.engine.begin() as connection:
        # Without it, each fill reused the space the last drain freed, and the layouts
        # alternated: every other drain ran up to twice as fast, whatever its kind.
        connection.execute(sa.text("TRUNCATE bench_signal"))
        connection.execute(FILL, {"rows": rows})
    with db.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.execute(sa.text("VACUUM ANALYZE bench_signal"))


def drain_bare(conninfo: str) -> int:
    sent = 0
    with psycopg.connect(conninfo) as connection:
        while True:
            rows = connection.execute(BARE_BURST, (BURST,)).fetchall()
            connection.commit()
            sent += len(rows)
            if len(rows) < BURST:
                return sent


def timed(drain: Any, rows: int) -> float:
    fill(rows)
    started = time.perf_counter()
    sent = drain()
    elapsed = time.perf_counter() - started
    assert sent == rows, f"drained {sent} of {rows} rows"
    return rows / elapsed


def run(rows: int, rounds: int) -> None:
    with bench_database("signalbus_bench_flushmany") as url:
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = url
        db.init_app(app)
        conninfo = libpq_conninfo(url)
        with app.app_context():
            db.create_all()
            bare, bus = [], []
            for round_number in range(1, rounds + 1):
                bare.append(timed(lambda: drain_bare(conninfo), rows))
                bus.append(timed(lambda: db.signalbus.flushmany([BenchSignal]), rows))
                print(
                    f"round {round_number}: bare psycopg {bare[-1]:,.0f} rows/s, "
                    f"flushmany {bus[-1]:,.0f} rows/s"
                )
            db.engine.dispose()
    bare_median, bus_median = statistics.median(bare), statistics.median(bus)
    print(f"median bare psycopg loop: {bare_median:,.0f} rows/s")
    print(f"median flushmany:         {bus_median:,.0f} rows/s")
    print(f"ratio flushmany / bare:   {bus_median / bare_median:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per drain")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both drains")
    args = parser.parse_args()
    run(args.rows, args.rounds)


if __name__ == "__main__":
    main()
