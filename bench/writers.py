"""Benchmark: what the signal trigger costs the application's writers, classic vs. wake protocol.

    python -m bench.writers [--url AMQP_URL] [--writers 1,8,32,64] [--duration 5] [--rounds 3]
                            [--stopped-writers 8] [--parts a,b,c]

The writers are pgbench's: ``pgbench -n -M prepared -c N -j min(N, 4) -T
DURATION -P DURATION`` with a script of one statement, so one single-row
transaction per run of the script (an autocommit ``INSERT``, its commit
included)::

    INSERT INTO order_placed_signal (payload)
    VALUES (json_build_object('t', extract(epoch FROM clock_timestamp()))::text)

on a throwaway database of the reference app (tables and notification
triggers, as :func:`bench.e2e_latency.create_schema` makes them). The table
is emptied (``TRUNCATE``) before every run; each run is one writer count of
one case, and its rate is pgbench's ``tps``. Three parts, in ``--rounds``
rounds; the medians over the rounds are printed:

(a) The trigger's own cost. Nobody sends; for each writer count four cases,
    their order rotating between rounds and writer counts:

    * ``no trigger``: the table's trigger dropped;
    * ``classic``: :data:`bench.wake.CLASSIC_FUNCTION`, a NOTIFY on every
      transaction;
    * ``new, awake``: the current function (``sql/notify_function.sql``) with
      the table held awake for the whole run: a connection of its own (an
      SQLAlchemy engine) runs the listener's own statement, ``sql/wake_up.sql``
      through :func:`signalbus.burst.run_scalar`, and so takes the table's
      ``awake`` lock for its session; it stays idle, holding it, until the run
      has ended, then gives it back (``sql/fall_asleep.sql``). ``pg_locks``
      shows it held before and after the run. The rows pile up meanwhile;
    * ``new, asleep``: the current function, nobody awake: every writer tries
      the lock, then notifies.

    Prints the tps and the ratios to ``no trigger``, against the targets of
    issue 8: ``new, awake`` at least 0.9 of ``no trigger`` at 8 and 32
    writers, and at least 3 times ``classic`` at 32.

(b) End to end. The real sidecar, ``flask --app refapp signalbus listen``
    (:class:`bench.e2e_latency.Sidecar`, environment of
    :func:`bench.wake.listener_environment`), relays every row to a fresh
    topic exchange with a bound durable queue, which a consumer thread reads
    (its own pika connection, ``auto_ack``). Two cases, their order
    alternating: ``classic`` (the classic function, a listener with
    ``SIGNALBUS_ALWAYS_NOTIFY``) and ``new`` (the current function and
    listener). After pgbench, the run waits until the table is empty and the
    consumer has received a message (by message id, the row's) for every
    transaction pgbench counted; it fails if that takes over 120 s. Prints
    the tps, the ratio new/classic (target: at least 2 at 32 writers), the
    seconds from the writers' end until every row had arrived, and p99 and
    max of insert->receive: the consumer's ``time.time()`` on the first
    delivery of a row minus the ``clock_timestamp()`` of its ``INSERT`` (the
    commit included, so an upper bound; the consumer competes for the same
    CPUs, as it does in every case). Writers that outrun the relay leave a
    backlog in the table, growing through the run: the delays then grow
    with it, and so do the seconds until every row had arrived.

(c) A stopped listener, at ``--stopped-writers`` writers, the ``new``
    protocol, two cases, their order alternating:

    * ``no listener``: pgbench alone, nobody awake;
    * ``stopped listener``: the sidecar relays a lead-in pgbench run of
      :data:`LEAD_IN` s; once :data:`STOP_AFTER` s of it have passed, rows
      have reached the consumer and ``pg_locks`` shows the sidecar's backend
      holding the table's ``awake`` lock, the sidecar gets SIGSTOP (and
      SIGCONT and another try if, once its backend is idle, the lock turned
      out to be given back). The measured pgbench run starts after the
      lead-in, with the stopped sidecar holding the lock before and after it
      (checked). Then SIGCONT, and the run waits until every row of both
      pgbench runs has reached the consumer, as in (b).

    Prints pgbench's tps, ``latency average`` and ``latency stddev`` of the
    measured run of each case, and the seconds from SIGCONT until every row
    had arrived: writers neither wait for a stopped listener nor lose rows.

The defaults take about 8 minutes (5 s runs rather than 10, for that).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pika
import psycopg
import sqlalchemy as sa

from bench import polling
from bench.database import bench_database
from bench.e2e_latency import Sidecar, create_schema
from bench.rabbitmq import DEFAULT_URL
from bench.stats import percentiles
from bench.throughput import broker_topology
from bench.wake import install_classic_function, listener_environment
from signalbus.burst import run_scalar
from signalbus.connections import runs_on_driver
from signalbus.conninfo import libpq_conninfo
from signalbus.rabbitmq import redact_url
from signalbus.triggers import install_trigger, load_sql, trigger_channels

TABLE = "order_placed_signal"
SCRIPT = (
    f"INSERT INTO {TABLE} (payload)"
    " VALUES (json_build_object('t', extract(epoch FROM clock_timestamp()))::text);\n"
)
#: The cases of part (a), (b) and (c).
TRIGGER_CASES = ("no trigger", "classic", "new, awake", "new, asleep")
PROTOCOLS = ("classic", "new")
STOPPED_CASES = ("no listener", "stopped listener")
#: pgbench threads at most (``-j``).
MAX_THREADS = 4
#: Seconds of the lead-in run of part (c), and of it before the listener is stopped.
LEAD_IN = 3
STOP_AFTER = 2
#: Seconds between two looks at the database or the consumer.
POLL = 0.02
#: Seconds every row gets to reach the consumer once the writers stopped.
DELIVERY_TIMEOUT = 120.0
#: The parameters of the listener's wake-protocol statements for the table.
AWAKE_TABLE = {"table": f'"{TABLE}"'}
#: Backends holding the table's ``awake`` lock (see ``sql/notify_function.sql``).
AWAKE_HOLDERS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = 1935832435::oid AND objid = %s::regclass::oid AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
#: Backends of a list of pids running a statement.
ACTIVE = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'"
#: The targets of issue 8.
AWAKE_VS_NONE = (0.9, (8, 32))
AWAKE_VS_CLASSIC = (3.0, 32)
NEW_VS_CLASSIC = (2.0, 32)


@dataclass(frozen=True)
class Run:
    """What pgbench reported of one run."""

    tps: float
    transactions: int
    #: ``latency average`` and ``latency stddev``, in ms.
    latency: float
    stddev: float


def pgbench_command(conninfo: str, script: Path, writers: int, duration: int) -> list[str]:
    threads = min(writers, MAX_THREADS)
    return [
        *("pgbench", "-n", "-M", "prepared", "-f", str(script)),
        *("-c", str(writers), "-j", str(threads), "-T", str(duration), "-P", str(duration)),
        conninfo,
    ]


def parse_pgbench(output: str) -> Run:
    """Return the numbers of pgbench's report *output*."""

    def number(label: str) -> float:
        match = re.search(rf"^{label}[:=] *([\d.]+)", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {label!r} in pgbench's output:\n{output}")
        return float(match.group(1))

    return Run(
        tps=number("tps "),
        transactions=int(number("number of transactions actually processed")),
        latency=number("latency average "),
        stddev=number("latency stddev "),
    )


def pgbench_result(status: int, stdout: str, stderr: str) -> Run:
    """Return the numbers of a pgbench run that ended with *status* and printed *stdout*."""
    if status != 0:
        raise RuntimeError(f"pgbench exited with {status}:\n{stdout}\n{stderr}")
    return parse_pgbench(stdout)


class Consumer:
    """A thread reading the queue: the delay of each row's first delivery, by message id.

    The delay is the ``time.time()`` of the delivery minus the payload's ``t``.
    """

    def __init__(self, amqp_url: str, queue: str) -> None:
        self.delays: dict[str, float] = {}
        self.ready = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(amqp_url, queue), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the consumer did not start")

    def _run(self, amqp_url: str, queue: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        channel.basic_consume(queue, self._on_message, auto_ack=True)
        self.ready.set()
        while not self.done.is_set():
            connection.process_data_events(time_limit=0.05)
        connection.close()

    def _on_message(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        received = time.time()
        self.delays.setdefault(properties.message_id, received - json.loads(body)["t"])

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll *condition* every :data:`POLL` s; say whether it held within *timeout* s."""
    return polling.wait_until(condition, timeout, POLL)


@dataclass(frozen=True)
class Broker:
    """The broker's URL, the exchange (and its bound queue's) name, purging the queue."""

    url: str
    exchange: str
    purge: Callable[[], int]


class Bench:
    """The throwaway database and broker topology of one invocation, and their runs."""

    def __init__(self, database_url: str, workdir: Path, duration: int) -> None:
        self.database_url = database_url
        self.conninfo = libpq_conninfo(database_url)
        #: Where the sidecar sends, once the parts that relay begin (see :meth:`relaying`).
        self.broker: Broker | None = None
        self.workdir = workdir
        self.duration = duration
        self.script = workdir / "insert.sql"
        self.script.write_text(SCRIPT)
        self.engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        with self.engine.connect() as connection:
            self.channel = trigger_channels(connection)[TABLE]
        self.admin = psycopg.connect(self.conninfo, autocommit=True)

    def close(self) -> None:
        self.admin.close()
        self.engine.dispose()

    def prepare(self, function: str | None) -> None:
        """Install *function* (``"classic"``, ``"new"``; ``None``: no trigger); empty the table."""
        if function is None:
            self.admin.execute(f"DROP TRIGGER IF EXISTS signalbus_notify ON {TABLE}")
        else:
            with self.engine.connect() as connection:
                install_trigger(connection, TABLE, channel=self.channel)
            if function == "classic":
                install_classic_function(self.conninfo)
        self.admin.execute(f"TRUNCATE {TABLE}")

    def start_pgbench(self, writers: int, duration: int) -> subprocess.Popen[str]:
        command = pgbench_command(self.conninfo, self.script, writers, duration)
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def pgbench(self, writers: int) -> Run:
        command = pgbench_command(self.conninfo, self.script, writers, self.duration)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return pgbench_result(done.returncode, done.stdout, done.stderr)

    def awake_holders(self) -> list[int]:
        return [pid for (pid,) in self.admin.execute(AWAKE_HOLDERS, (TABLE,))]

    def settled_awake_holders(self) -> list[int]:
        """The ``awake`` holders once their backends are idle (one may be giving it back)."""
        holders = self.awake_holders()
        wait_until(lambda: self.admin.execute(ACTIVE, (holders,)).fetchone() == (0,), 5)
        return self.awake_holders()

    def rows_left(self) -> int:
        row = self.admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return 0 if row is None else int(row[0])

    @contextmanager
    def held_awake(self) -> Iterator[None]:
        """Hold the table's ``awake`` lock, as the listener takes it, on a connection of its own."""
        wake_up, fall_asleep = (sa.text(load_sql(name)) for name in ("wake_up", "fall_asleep"))
        with self.engine.connect() as connection:
            on_driver = runs_on_driver(connection)
            if not run_scalar(connection, on_driver, wake_up, AWAKE_TABLE):
                raise RuntimeError(f"could not take the awake lock of {TABLE}")
            try:
                yield
            finally:
                run_scalar(connection, on_driver, fall_asleep, AWAKE_TABLE)

    @contextmanager
    def relaying(self, protocol: str) -> Iterator[tuple[Sidecar, Consumer]]:
        """Run a consumer and the sidecar for *protocol* on an empty queue."""
        broker = self.broker
        assert broker is not None, "no broker"
        broker.purge()
        consumer = Consumer(broker.url, broker.exchange)
        try:
            with mock.patch.dict(os.environ, listener_environment(protocol)):
                log_file = self.workdir / f"sidecar-{protocol}.log"
                sidecar = Sidecar(self.database_url, broker.url, broker.exchange, log_file)
            try:
                yield sidecar, consumer
            finally:
                os.kill(sidecar.process.pid, signal.SIGCONT)
                sidecar.stop()
        finally:
            consumer.stop()

    def wait_delivered(self, consumer: Consumer, rows: int) -> float:
        """Wait until the table is empty and *consumer* has *rows* rows; return the seconds."""
        started = time.monotonic()
        if not wait_until(
            lambda: self.rows_left() == 0 and len(consumer.delays) >= rows, DELIVERY_TIMEOUT
        ):
            raise RuntimeError(
                f"{len(consumer.delays)} of {rows} rows received, {self.rows_left()} in the"
                f" table, {DELIVERY_TIMEOUT:g} s after the writers stopped"
            )
        return time.monotonic() - started


def rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


# (a) The trigger's own cost.


def trigger_run(bench: Bench, case: str, writers: int) -> Run:
    """Run pgbench once for *case* of part (a)."""
    function = {"no trigger": None, "classic": "classic"}.get(case, "new")
    bench.prepare(function)
    if case != "new, awake":
        return bench.pgbench(writers)
    with bench.held_awake():
        before = bench.awake_holders()
        run = bench.pgbench(writers)
        after = bench.awake_holders()
    if len(before) != 1 or before != after:
        raise RuntimeError(f"the awake lock was not held throughout: {before} then {after}")
    return run


def trigger_costs(bench: Bench, writer_counts: Sequence[int], rounds: int) -> None:
    print("(a) the trigger's own cost: pgbench tps, nobody sending")
    tps: dict[int, dict[str, list[float]]] = {
        writers: {case: [] for case in TRIGGER_CASES} for writers in writer_counts
    }
    for number in range(rounds):
        for index, writers in enumerate(writer_counts):
            for case in rotated(TRIGGER_CASES, number + index):
                tps[writers][case].append(trigger_run(bench, case, writers).tps)
            shown = "  ".join(f"{case} {tps[writers][case][-1]:7.0f}" for case in TRIGGER_CASES)
            print(f" round {number + 1}, {writers:2} writers: {shown}")
    medians = {w: {c: statistics.median(v) for c, v in cases.items()} for w, cases in tps.items()}
    report_trigger_costs(medians, rounds)


def report_trigger_costs(medians: dict[int, dict[str, float]], rounds: int) -> None:
    print(f" medians of {rounds} rounds, tps (ratio to no trigger):")
    columns = ("writers", *(f"{case:>12}" for case in TRIGGER_CASES), "awake/classic")
    print(table_row(columns, columns))
    for writers, cases in medians.items():
        none = cases["no trigger"]
        cells = [f"{value:.0f} ({value / none:.2f})" for value in cases.values()]
        awake = cases["new, awake"] / cases["classic"]
        print(table_row((str(writers), *cells, f"{awake:.2f}"), columns))
    least, counts = AWAKE_VS_NONE
    shown = ", ".join(
        f"{w}: {ratio(medians, w, 'new, awake', 'no trigger')}" for w in counts if w in medians
    )
    print(f" target: new, awake >= {least:g}x no trigger at 8 and 32 writers: {shown or 'n/a'}")
    least, writers = AWAKE_VS_CLASSIC
    shown = ratio(medians, writers, "new, awake", "classic")
    print(f" target: new, awake >= {least:g}x classic at {writers} writers: {shown}")


def table_row(cells: Sequence[str], columns: Sequence[str]) -> str:
    """The *cells* of a table's row, right-aligned under their *columns*."""
    return "  " + "  ".join(
        cell.rjust(len(column)) for cell, column in zip(cells, columns, strict=True)
    )


def ratio(medians: dict[int, dict[str, float]], writers: int, over: str, under: str) -> str:
    if writers not in medians:
        return "n/a"
    return f"{medians[writers][over] / medians[writers][under]:.2f}"


# (b) End to end.


@dataclass(frozen=True)
class Relayed:
    """One run of part (b): pgbench's numbers, the delivery's seconds and delays in ms."""

    run: Run
    drained: float
    p99: float
    worst: float


def relay_run(bench: Bench, protocol: str, writers: int) -> Relayed:
    """Run pgbench once with the sidecar of *protocol* relaying; check every row arrived."""
    bench.prepare(protocol)
    with bench.relaying(protocol) as (_sidecar, consumer):
        run = bench.pgbench(writers)
        drained = bench.wait_delivered(consumer, run.transactions)
        delays = percentiles([delay * 1000 for delay in consumer.delays.values()])
    return Relayed(run, drained, delays["p99"], delays["max"])


def end_to_end(bench: Bench, writer_counts: Sequence[int], rounds: int) -> None:
    print("(b) end to end: pgbench tps with the sidecar relaying every row to RabbitMQ")
    results: dict[int, dict[str, list[Relayed]]] = {
        writers: {protocol: [] for protocol in PROTOCOLS} for writers in writer_counts
    }
    for number in range(rounds):
        for index, writers in enumerate(writer_counts):
            for protocol in rotated(PROTOCOLS, number + index):
                result = relay_run(bench, protocol, writers)
                results[writers][protocol].append(result)
                print(
                    f" round {number + 1}, {writers:2} writers, {protocol:7}: {result.run.tps:6.0f}"
                    f" tps, {result.run.transactions:7,} rows all received"
                    f" {result.drained:5.2f} s after the writers' end;"
                    f" insert->receive p99 {result.p99:7.1f} ms, max {result.worst:7.1f} ms"
                )
    report_end_to_end(results, rounds)


def report_end_to_end(results: dict[int, dict[str, list[Relayed]]], rounds: int) -> None:
    print(f" medians of {rounds} rounds, classic / new:")
    columns = (
        "writers",
        f"{'tps':>13}",
        "new/classic",
        "insert->receive p99 ms",
        f"{'max ms':>17}",
        "all received after s",
    )
    print(table_row(columns, columns))
    medians: dict[int, dict[str, float]] = {}
    for writers, protocols in results.items():
        tps = {p: statistics.median(r.run.tps for r in runs) for p, runs in protocols.items()}
        medians[writers] = tps
        cells = (
            str(writers),
            median_pair(protocols, lambda result: result.run.tps, ".0f"),
            f"{tps['new'] / tps['classic']:.2f}",
            median_pair(protocols, lambda result: result.p99, ".1f"),
            median_pair(protocols, lambda result: result.worst, ".1f"),
            median_pair(protocols, lambda result: result.drained, ".2f"),
        )
        print(table_row(cells, columns))
    least, writers = NEW_VS_CLASSIC
    shown = ratio(medians, writers, "new", "classic")
    print(f" target: new >= {least:g}x classic at {writers} writers: {shown}")


def median_pair(
    protocols: dict[str, list[Relayed]], number: Callable[[Relayed], float], spec: str
) -> str:
    """``classic / new``: the medians of *number* of each protocol's runs, formatted by *spec*."""
    classic, new = (
        statistics.median(number(result) for result in protocols[protocol])
        for protocol in PROTOCOLS
    )
    return f"{classic:{spec}} / {new:{spec}}"


# (c) A stopped listener.


def stop_awake(bench: Bench, sidecar: Sidecar, consumer: Consumer) -> int:
    """SIGSTOP *sidecar* once relaying and awake; return the pid of its backend holding the lock.

    Relaying: :data:`STOP_AFTER` s have passed and rows have reached *consumer*.
    Awake: its backend holds the ``awake`` lock, still once the backend is idle.
    """
    started = time.monotonic()
    while True:
        if not wait_until(
            lambda: (
                time.monotonic() - started >= STOP_AFTER
                and bool(consumer.delays)
                and bool(bench.awake_holders())
            ),
            LEAD_IN,
        ):
            raise RuntimeError(f"the listener was neither relaying nor awake within {LEAD_IN} s")
        os.kill(sidecar.process.pid, signal.SIGSTOP)
        holders = bench.settled_awake_holders()
        if holders:
            return holders[0]
        os.kill(sidecar.process.pid, signal.SIGCONT)


def stopped_run(bench: Bench, writers: int) -> tuple[Run, float]:
    """Run pgbench with the sidecar stopped awake; return its numbers and the delivery's s."""
    bench.prepare("new")
    with bench.relaying("new") as (sidecar, consumer):
        with bench.start_pgbench(writers, LEAD_IN) as lead_in:
            try:
                holder = stop_awake(bench, sidecar, consumer)
            except BaseException:
                lead_in.kill()
                raise
            stdout, stderr = lead_in.communicate()
        lead = pgbench_result(lead_in.returncode, stdout, stderr)
        run = bench.pgbench(writers)
        if bench.awake_holders() != [holder]:
            raise RuntimeError(f"the stopped listener's backend {holder} lost the awake lock")
        os.kill(sidecar.process.pid, signal.SIGCONT)
        drained = bench.wait_delivered(consumer, lead.transactions + run.transactions)
    return run, drained


def stopped_listener(bench: Bench, writers: int, rounds: int) -> None:
    print(f"(c) a stopped listener: {writers} writers, new protocol")
    runs: dict[str, list[Run]] = {case: [] for case in STOPPED_CASES}
    drains: list[float] = []
    for number in range(rounds):
        for case in rotated(STOPPED_CASES, number):
            if case == "no listener":
                bench.prepare("new")
                run = bench.pgbench(writers)
                note = ""
            else:
                run, drained = stopped_run(bench, writers)
                drains.append(drained)
                note = f"; every row received {drained:.2f} s after SIGCONT"
            runs[case].append(run)
            print(f" round {number + 1}, {case:16}: {format_run(run)}{note}")
    print(f" medians of {rounds} rounds:")
    for case, case_runs in runs.items():
        print(f"  {case:16}: {format_run(median_run(case_runs))}")
    print(f"  every row received {statistics.median(drains):.2f} s after SIGCONT")


def median_run(runs: Sequence[Run]) -> Run:
    """The median of each of pgbench's numbers over *runs*."""
    return Run(
        tps=statistics.median(run.tps for run in runs),
        transactions=int(statistics.median(run.transactions for run in runs)),
        latency=statistics.median(run.latency for run in runs),
        stddev=statistics.median(run.stddev for run in runs),
    )


def format_run(run: Run) -> str:
    return (
        f"{run.tps:6.0f} tps, latency average {run.latency:6.3f} ms,"
        f" stddev {run.stddev:6.3f} ms ({run.transactions:,} transactions)"
    )


def parse_counts(text: str) -> list[int]:
    return [int(count) for count in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument(
        "--writers", type=parse_counts, default=[1, 8, 32, 64], help="writer counts, e.g. 8,32"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument("--stopped-writers", type=int, default=8, help="writers of part (c)")
    parser.add_argument("--parts", default="a,b,c", help="the parts to run, e.g. a,c")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    print(
        f"broker {redact_url(args.url)}: writers {','.join(map(str, args.writers))},"
        f" {args.duration} s per run, {args.rounds} round(s)"
    )
    database = f"signalbus_bench_writers_{os.getpid()}"
    with bench_database(database) as database_url, tempfile.TemporaryDirectory() as workdir:
        create_schema(database_url)
        bench = Bench(database_url, Path(workdir), args.duration)
        try:
            run_parts(bench, args, parts)
        finally:
            bench.close()


def run_parts(bench: Bench, args: argparse.Namespace, parts: set[str]) -> None:
    """Run the *parts* asked for; the broker topology only around those that relay."""
    if "a" in parts:
        trigger_costs(bench, args.writers, args.rounds)
    if not parts & {"b", "c"}:
        return
    # Made here, not before (a): its connection, idle meanwhile, would miss its heartbeats.
    with broker_topology(args.url) as (exchange, purge):
        bench.broker = Broker(args.url, exchange, purge)
        if "b" in parts:
            end_to_end(bench, args.writers, args.rounds)
        if "c" in parts:
            stopped_listener(bench, args.stopped_writers, args.rounds)


if __name__ == "__main__":
    main()
