"""Benchmark: the listener serving many signal models: drain rate, resources, idle cost.

    python -m bench.models [--models 40] [--rows 5000] [--payload 200] [--rounds 3] [--idle 60]
                           [--private]

Two variants, each in a throwaway database served by its own ``flask
signalbus listen`` (the real CLI, default options: ``SIGNALBUS_WORKERS``
workers, 60 s sweeps) with this module as its app (``flask --app
bench.models``):

* ``1 model``: one signal table holding ``--models`` x ``--rows`` rows;
* ``N models``: ``--models`` signal tables of ``--rows`` rows each.

The models are made at run time (``$BENCH_MODELS`` of them, in the database
``$BENCH_DATABASE_URL``): an id and a ``--payload``-character text, bursts of
1000 rows, sends that do nothing but count. No broker is involved, so the
listener holds no AMQP connection. The tables get the notification trigger
(``check_signal_triggers(..., install=True)``), are filled and ``VACUUM
ANALYZE``-d before the listener starts: it finds the backlog with the sweep
that follows its ``LISTEN``.

Each round runs both variants, in turns first:

* **drain**: rows/s from the time stamp of the listener's ``Now listening``
  log line until a separate connection, checking every 50 ms, finds every
  table empty. The tables are then vacuumed, so that autovacuum does not
  visit them in the idle window.
* **resources** of the listener process while draining (peak), 5 s after
  the drain, and (``N models``) after the idle window: PostgreSQL
  connections (client backends of the database other than the checker's,
  read from another database), threads and RSS (``/proc/<pid>/status``).
* **pool timeouts**: lines of the listener's log with ``QueuePool limit``
  (and, for the record, its warning and error lines).
* **idle** (``N models`` only; ``--idle 0`` skips it): the transactions the
  database runs in ``--idle`` seconds, counted as :mod:`bench.latency` counts
  them (:func:`bench.idle.measure_idle`; here every client backend is the
  listener's, as nothing else connects), as transactions per minute. On a
  shared server this is an upper bound: a backend that ``LISTEN``s runs a
  transaction whenever the ``NOTIFY`` traffic of the other databases has
  moved the server's notification queue a few pages on, and reports it with
  its next query (the listener's probe). ``--private`` runs everything on a
  throwaway server of :mod:`signalbus.embedded` (no fsync, no autovacuum)
  instead of ``$SIGNALBUS_BENCH_DATABASE_URL`` or the default server.

Prints each round, then the medians over the rounds and the ratio of the
drain rates (the targets of issue 10: ``N models`` at >= 0.8 times the rate
of ``1 model``, no pool timeout, connections and threads independent of the
number of models, <= 2 idle transactions a minute). The listener, the
checker and PostgreSQL share the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from psycopg import sql

from bench.database import bench_database, private_server, server_url
from bench.idle import Backend, measure_idle
from bench.process import LoggedProcess
from signalbus import SignalBusMixin
from signalbus.config import channel_setting
from signalbus.conninfo import libpq_conninfo
from signalbus.triggers import check_signal_triggers

BURST = 1000
#: Seconds between two checks of the tables while the listener drains them.
POLL = 0.05
#: Seconds after the drain at which the idle listener's resources are read.
SETTLE = 5.0
#: Seconds a drain may take before the benchmark gives up.
DRAIN_TIMEOUT = 600.0
#: Log lines that say a flush waited for a pooled connection in vain.
POOL_TIMEOUT = "QueuePool limit"


class BenchSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


def _count_one(cls: Any, obj: Any) -> None:
    cls.sent += 1


def _count_many(cls: Any, objs: Sequence[Any]) -> None:
    cls.sent += len(objs)


def table_names(count: int) -> list[str]:
    return [f"models_signal_{number:02d}" for number in range(count)]


def create_app(database_url: str | None = None, models: int | None = None) -> Flask:
    """The listener's app: ``$BENCH_MODELS`` signal models in ``$BENCH_DATABASE_URL``."""
    db = BenchSQLAlchemy()
    classes = []  # the registry holds its models weakly
    for table in table_names(models or int(os.environ["BENCH_MODELS"])):
        namespace = {
            "__tablename__": table,
            "signalbus_burst_count": BURST,
            "sent": 0,
            "id": sa.Column(sa.BigInteger, primary_key=True),
            "payload": sa.Column(sa.Text, nullable=False),
            "send_signalbus_message": classmethod(_count_one),
            "send_signalbus_messages": classmethod(_count_many),
        }
        classes.append(type(table.title().replace("_", ""), (db.Model,), namespace))
    app = Flask(__name__)
    app.extensions["bench.models"] = classes
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["BENCH_DATABASE_URL"]
    db.init_app(app)
    return app


def prepare(database_url: str, models: int, rows: int, payload: int) -> None:
    """Create *models* signal tables with their triggers; fill each with *rows* rows
    whose payload is *payload* characters long."""
    app = create_app(database_url, models)
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        db.create_all()
        tables = db.signalbus.get_signal_tables()
        check_signal_triggers(db, tables, channel_setting(app.config), install=True)
        db.engine.dispose()
    fill = (
        "INSERT INTO {} (payload) "
        "SELECT rpad('signal ' || g, %s, 'x') FROM generate_series(1, %s) g"
    )
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as connection:
        for table in table_names(models):
            connection.execute(sql.SQL(fill).format(sql.Identifier(table)), (payload, rows))
        vacuum(connection, models)


def vacuum(connection: psycopg.Connection, models: int) -> None:
    """``VACUUM ANALYZE`` the tables: autovacuum finds nothing to do for a while."""
    for table in table_names(models):
        connection.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


class ListenerProcess(LoggedProcess):
    """``flask --app bench.models signalbus listen`` in a subprocess, its log in a file."""

    def __init__(self, database_url: str, models: int, log_file: Path) -> None:
        env = {**os.environ, "BENCH_DATABASE_URL": database_url, "BENCH_MODELS": str(models)}
        command = [sys.executable, "-m", "flask", "--app", "bench.models", "signalbus", "listen"]
        super().__init__(command, env, log_file, ready="Now listening")

    def ready_at(self) -> float:
        """The time stamp of the ``Now listening`` log line (``%(asctime)s``, in ms)."""
        line = next(line for line in self.log_lines() if "Now listening" in line)
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    def log_lines(self) -> list[str]:
        return self.log_file.read_text().splitlines()

    def status(self) -> dict[str, int]:
        """Threads and RSS (kB) of the process, from ``/proc/<pid>/status``."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in text.splitlines())
        return {"threads": int(fields["Threads"]), "rss_kb": int(fields["VmRSS"].split()[0])}


@dataclass
class Resources:
    """PostgreSQL connections, threads and RSS of the listener."""

    connections: int = 0
    threads: int = 0
    rss_mb: float = 0.0

    def peak(self, other: Resources) -> Resources:
        return Resources(
            max(self.connections, other.connections),
            max(self.threads, other.threads),
            max(self.rss_mb, other.rss_mb),
        )


class Observer:
    """Reads the listener's resources; from another database, so that it adds no backend."""

    def __init__(self, server: str, database: str, listener: ListenerProcess) -> None:
        self.database = database
        self.listener = listener
        self.connection = psycopg.connect(server, autocommit=True)

    def close(self) -> None:
        self.connection.close()

    def resources(self, poller_pid: int = 0) -> Resources:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend' AND pid <> %s"
        )
        row = self.connection.execute(query, (self.database, poller_pid)).fetchone()
        assert row is not None
        status = self.listener.status()
        return Resources(row[0], status["threads"], status["rss_kb"] / 1024)


@dataclass
class Result:
    """One variant's numbers in one round."""

    rows: int
    seconds: float
    draining: Resources
    idle: Resources
    after_idle: Resources | None
    idle_transactions: int | None
    pool_timeouts: int
    warnings: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def drain(database_url: str, observer: Observer, models: int) -> tuple[float, Resources]:
    """Wait until every table is empty; return the seconds since the listener was
    ready and the peak resources meanwhile. Then vacuum the tables."""
    exists = " OR ".join(f"EXISTS (SELECT FROM {table})" for table in table_names(models))
    peak = Resources()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as poller:
        for polls in itertools.count():
            row = poller.execute(f"SELECT {exists}").fetchone()
            finished = time.time()
            empty = not (row and row[0])
            if polls % 5 == 0 or empty:
                peak = peak.peak(observer.resources(poller.info.backend_pid))
            if empty:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tables were not empty after {DRAIN_TIMEOUT:g} s")
            time.sleep(POLL)
        vacuum(poller, models)
    return finished - observer.listener.ready_at(), peak


def is_client(backend: Backend) -> bool:
    """Whether *backend* is a client's: in the idle window, only the listener connects."""
    return backend[1] == "client backend"


@dataclass(frozen=True)
class Variant:
    """*models* tables of *rows* rows each; *idle* seconds of idle window (0: none)."""

    label: str
    models: int
    rows: int
    payload: int
    idle: float


def run_variant(variant: Variant, workdir: Path) -> Result:
    """Drain the variant's tables with a fresh listener in a fresh database; measure it."""
    name = f"signalbus_bench_models_{os.getpid()}"
    server = libpq_conninfo(server_url())
    idle_transactions, after_idle = None, None
    with bench_database(name) as database_url:
        prepare(database_url, variant.models, variant.rows, variant.payload)
        log_file = workdir / f"listener-{variant.models}.log"
        listener = ListenerProcess(database_url, variant.models, log_file)
        try:
            observer = Observer(server, name, listener)
            try:
                seconds, draining = drain(database_url, observer, variant.models)
                time.sleep(SETTLE)
                idle = observer.resources()
                if variant.idle > 0:
                    idle_transactions = measure_idle(server, name, variant.idle, is_client)
                    after_idle = observer.resources()
            finally:
                observer.close()
        finally:
            listener.stop()
        lines = listener.log_lines()
    return Result(
        rows=variant.models * variant.rows,
        seconds=seconds,
        draining=draining,
        idle=idle,
        after_idle=after_idle,
        idle_transactions=idle_transactions,
        pool_timeouts=sum(POOL_TIMEOUT in line for line in lines),
        warnings=sum(" WARNING " in line or " ERROR " in line for line in lines),
    )


def show_round(number: int, results: dict[str, Result]) -> None:
    shown = "  ".join(
        f"{label}: {result.rows:,} rows in {result.seconds:.2f} s = {result.rate:,.0f}/s"
        for label, result in results.items()
    )
    print(f"round {number}: {shown}", flush=True)


def report(variants: Sequence[Variant], runs: dict[str, list[Result]]) -> None:
    one, many = variants
    title = f"medians of {len(runs[one.label])} round(s)"
    print(f"\n{title:28} {one.label:>12} {many.label:>12}")

    def line(
        title: str, value: Callable[[Result], Any], form: str = "{:,.0f}", total: bool = False
    ) -> None:
        cells = []
        for variant in variants:
            values = [value(result) for result in runs[variant.label]]
            known = [value for value in values if value is not None]
            aggregate = sum(known) if total else statistics.median(known or [0])
            cells.append(form.format(aggregate) if known else "-")
        print(f"{title:28} " + " ".join(f"{cell:>12}" for cell in cells))

    line("backlog rows", lambda r: r.rows)
    line("drain seconds", lambda r: r.seconds, "{:.2f}")
    line("drain rows/s", lambda r: r.rate)
    line("pool timeouts, all rounds", lambda r: r.pool_timeouts, total=True)
    line("log warnings+errors, all", lambda r: r.warnings, total=True)
    line("pg connections, draining", lambda r: r.draining.connections)
    line(f"pg connections, +{SETTLE:g} s", lambda r: r.idle.connections)
    line("pg connections, after idle", lambda r: r.after_idle and r.after_idle.connections)
    line("threads, draining", lambda r: r.draining.threads)
    line(f"threads, +{SETTLE:g} s", lambda r: r.idle.threads)
    line("threads, after idle", lambda r: r.after_idle and r.after_idle.threads)
    line("RSS MB, draining", lambda r: r.draining.rss_mb, "{:.1f}")
    line(f"RSS MB, +{SETTLE:g} s", lambda r: r.idle.rss_mb, "{:.1f}")
    line("RSS MB, after idle", lambda r: r.after_idle and r.after_idle.rss_mb, "{:.1f}")
    line("AMQP connections", lambda r: 0)
    print("(no broker: the sends only count)")
    ratio = statistics.median(r.rate for r in runs[many.label]) / statistics.median(
        r.rate for r in runs[one.label]
    )
    print(f"drain rate {many.label} / {one.label}: {ratio:.2f}  (target >= 0.8)")
    if many.idle > 0:
        counts = [r.idle_transactions or 0 for r in runs[many.label]]
        per_minute = statistics.median(count * 60 / many.idle for count in counts)
        print(
            f"idle transactions, {many.label}: {counts} in {many.idle:g} s, "
            f"median {per_minute:.1f}/min  (target <= 2 at the 60 s sweep)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    parser.add_argument("--models", type=int, default=40, help="signal models of the N variant")
    parser.add_argument("--rows", type=int, default=5000, help="backlog rows per model of it")
    parser.add_argument("--payload", type=int, default=200, help="characters of each payload")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds (0: skip)")
    parser.add_argument(
        "--private", action="store_true", help="run on a throwaway server of signalbus.embedded"
    )
    args = parser.parse_args(argv)
    if args.models < 2 or args.rows < 1 or args.rounds < 1:
        parser.error("--models must be at least 2, --rows and --rounds at least 1")
    variants = [
        Variant("1 model", 1, args.models * args.rows, args.payload, 0.0),
        Variant(f"{args.models} models", args.models, args.rows, args.payload, args.idle),
    ]
    runs: dict[str, list[Result]] = {variant.label: [] for variant in variants}
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        if args.private:
            stack.enter_context(private_server(Path(workdir) / "postgres"))
        for number in range(1, args.rounds + 1):
            order = variants if number % 2 else variants[::-1]
            results = {variant.label: run_variant(variant, Path(workdir)) for variant in order}
            for label, result in results.items():
                runs[label].append(result)
            show_round(number, results)
    report(variants, runs)


if __name__ == "__main__":
    main()
