"""Benchmark: commit-to-consumer latency and CPU per message of the listener and a bare relay.

    python -m bench.e2e_latency [--url AMQP_URL] [--rates 200,1000] [--duration 15] [--runs 3]

For each rate of ``--rates``, two relays carry the reference app's
``OrderPlacedSignal`` rows from PostgreSQL to RabbitMQ, one after the other
(their order alternates between runs), each on a throwaway database of the
reference app (tables and notification triggers) and a fresh topic exchange
with a bound durable queue:

* ``listener``: the real sidecar, ``flask --app refapp signalbus listen``;
* ``bare``: :mod:`bench.bare_relay`, about 80 lines of psycopg ``LISTEN`` and
  pika confirms, the smallest correct (at-least-once) relay.

A consumer process reads the queue. Once 20 warm-up rows have gone through,
the producer inserts one row per transaction at the rate for ``--duration``
seconds; each row's payload holds ``time.time()`` taken right before the
statement that inserts and commits it (an autocommit ``INSERT``: one round
trip, the commit included).

The latency of a row is the consumer's ``time.time()`` on delivery minus that
time: insert and commit (WAL flush), notification, the relay's wake-up,
``DELETE ... RETURNING``, publishing, routing and delivery. Prints
p50/p95/p99/max in ms, and the rate achieved.

CPU per message is CPU time (user + system, all threads) spent from the start
of producing until the consumer has every row, divided by the rows: of the
relay process, read from ``/proc/<pid>/stat``, and of the PostgreSQL backends
serving the relay's connections (the database's client backends other than
the producer's, from ``pg_stat_activity``; ``/proc`` is sampled every 0.25 s,
so that a backend ending in the window still counts; needs a local server).
Prints both per run, their medians over the runs, and the ratios
listener/bare of CPU and latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import pika
import psycopg

from bench.database import bench_database
from bench.process import LoggedProcess
from bench.rabbitmq import DEFAULT_URL
from bench.stats import Stats, format_stats, median_stats, percentiles
from bench.throughput import broker_topology
from signalbus.conninfo import libpq_conninfo
from signalbus.rabbitmq import redact_url

INSERT = "INSERT INTO order_placed_signal (payload) VALUES (%s)"
RELAYS = ("listener", "bare")
#: Rows sent through before the timed window (their ids in the payload are negative).
WARM_UP = 20
#: The producer's ``application_name``: its backend is not the relay's.
PRODUCER = "bench-producer"
SAMPLER = "bench-sampler"
CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")


def create_schema(database_url: str) -> None:
    """Create the reference app's tables and their notification triggers."""
    from refapp import create_app
    from refapp.models import db
    from signalbus.config import channel_setting
    from signalbus.triggers import check_signal_triggers

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        db.create_all()
        tables = db.signalbus.get_signal_tables()
        check_signal_triggers(db, tables, channel_setting(app.config), install=True)
        db.engine.dispose()


class Sidecar(LoggedProcess):
    """``flask --app refapp signalbus listen`` in a subprocess, its log in a file."""

    def __init__(self, database_url: str, amqp_url: str, exchange: str, log_file: Path) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "SIGNALBUS_RABBITMQ_URL": amqp_url,
            "SIGNALBUS_EXCHANGE": exchange,
        }
        command = [sys.executable, "-m", "flask", "--app", "refapp", "signalbus", "listen"]
        super().__init__(command, env, log_file)


class BareRelay(LoggedProcess):
    """:mod:`bench.bare_relay` in a subprocess, its log in a file."""

    def __init__(self, database_url: str, amqp_url: str, exchange: str, log_file: Path) -> None:
        conninfo = libpq_conninfo(database_url)
        command = [sys.executable, "-m", "bench.bare_relay", conninfo, amqp_url, exchange]
        super().__init__(command, dict(os.environ), log_file)


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of process *pid* and all its threads, in s."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK


class BackendCpu:
    """CPU time of the PostgreSQL backends of a database's clients but the producer.

    Samples ``pg_stat_activity`` and ``/proc`` every *interval* s in a thread
    from :meth:`start` to :meth:`stop`: a backend's CPU in the window is its
    last reading minus its reading at the start (0 if it began later).
    """

    QUERY = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND application_name NOT IN (%s, %s)"
    )

    def __init__(self, conninfo: str, interval: float = 0.25) -> None:
        self.connection = psycopg.connect(conninfo, autocommit=True, application_name=SAMPLER)
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        pids = self.connection.execute(self.QUERY, (PRODUCER, SAMPLER)).fetchall()
        readings = {}
        for (pid,) in pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # ended, or remote
                readings[pid] = cpu_seconds(pid)
        self.last.update(readings)
        return readings

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.first = self._sample()
        self.thread.start()

    def stop(self) -> tuple[float | None, int]:
        """Return the CPU s of the backends in the window (``None`` if none could be read)."""
        self.done.set()
        self.thread.join()
        self._sample()
        self.connection.close()
        if not self.last:
            return None, 0
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items()), len(self.last)


def consume(amqp_url: str, queue: str, ready: Connection, results: Connection) -> None:
    """Consumer process: report ``(row id, payload time, receive time)`` of each delivery.

    Runs until the parent sends the number of rows to expect and that many
    have arrived, or until 30 s after that.
    """
    deliveries: list[tuple[int, float, float]] = []
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()

    def on_message(_channel: object, _method: object, _properties: object, body: bytes) -> None:
        received = time.time()
        payload = json.loads(body)
        deliveries.append((payload["id"], payload["t"], received))

    channel.basic_consume(queue, on_message, auto_ack=True)
    ready.send(True)
    expected: int | None = None
    deadline = float("inf")
    while expected is None or (len(deliveries) < expected and time.monotonic() < deadline):
        connection.process_data_events(time_limit=0.05)
        if expected is None and results.poll():
            expected = results.recv()
            deadline = time.monotonic() + 30
    connection.close()
    results.send(deliveries)


def payload(number: int) -> str:
    return json.dumps({"id": number, "customer": f"customer-{number}", "t": time.time()})


def warm_up(conninfo: str) -> None:
    """Send :data:`WARM_UP` rows through the relay, 10 ms apart; return once all are sent."""
    with psycopg.connect(conninfo, autocommit=True, application_name=PRODUCER) as connection:
        for number in range(1, WARM_UP + 1):
            connection.execute(INSERT, (payload(-number),))
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        count = "SELECT count(*) FROM order_placed_signal"
        while connection.execute(count).fetchone() != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up rows were not sent within 30 s")
            time.sleep(0.02)


def produce(conninfo: str, rate: float, duration: float) -> list[float]:
    """Insert one row per transaction at *rate* per second.

    Returns, for each row (row *n* at index *n - 1*), when the server's answer
    to its ``INSERT`` (so to its commit) arrived.
    """
    count = int(rate * duration)
    acked = []
    with psycopg.connect(conninfo, autocommit=True, application_name=PRODUCER) as connection:
        cursor = connection.cursor()
        started = time.perf_counter()
        for number in range(1, count + 1):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            cursor.execute(INSERT, (payload(number),), prepare=True)
            acked.append(time.time())
    return acked


@dataclass
class Result:
    """One relay's run at one rate."""

    stats: dict[str, Stats]
    achieved: float
    #: CPU µs per message of the relay process, and of its PostgreSQL backends.
    relay_cpu: float
    postgres_cpu: float | None
    backends: int


def measure(amqp_url: str, relay: str, rate: float, duration: float) -> Result:
    """Run *relay* once at *rate*; return its latencies in ms (see :func:`latencies`) and CPU."""
    context = multiprocessing.get_context("spawn")
    database = f"signalbus_bench_e2e_{os.getpid()}"
    relay_class = Sidecar if relay == "listener" else BareRelay
    with (
        bench_database(database) as database_url,
        broker_topology(amqp_url) as (exchange, _purge),
        tempfile.TemporaryDirectory() as workdir,
    ):
        create_schema(database_url)
        conninfo = libpq_conninfo(database_url)
        ready_r, ready_w = context.Pipe(duplex=False)
        consumer_end, parent_end = context.Pipe()
        consumer = context.Process(
            target=consume, args=(amqp_url, exchange, ready_w, consumer_end), daemon=True
        )
        consumer.start()
        process = relay_class(database_url, amqp_url, exchange, Path(workdir) / f"{relay}.log")
        try:
            if not ready_r.poll(30):
                raise RuntimeError("the consumer did not start")
            warm_up(conninfo)
            backends = BackendCpu(conninfo)
            pid = process.process.pid
            cpu_started = cpu_seconds(pid)
            backends.start()
            started = time.monotonic()
            acked = produce(conninfo, rate, duration)
            achieved = len(acked) / (time.monotonic() - started)
            parent_end.send(WARM_UP + len(acked))
            deliveries = parent_end.recv()
            relay_cpu = cpu_seconds(pid) - cpu_started
            postgres_cpu, backend_count = backends.stop()
        finally:
            process.stop()
            consumer.join(5)
            if consumer.is_alive():
                consumer.kill()
    per_message = 1e6 / len(acked)
    return Result(
        latencies(deliveries, acked),
        achieved,
        relay_cpu * per_message,
        None if postgres_cpu is None else postgres_cpu * per_message,
        backend_count,
    )


def latencies(deliveries: list[tuple[int, float, float]], acked: list[float]) -> dict[str, Stats]:
    """Percentiles in ms of ``commit->receive`` and ``ack->receive`` (warm-up rows left out).

    ``commit->receive`` starts right before the committing ``INSERT`` is sent
    (the measure asked for, an upper bound); ``ack->receive`` when its answer
    arrived (a lower bound: the commit's WAL flush and answer are left out).
    """
    first = {row_id: (sent, received) for row_id, sent, received in reversed(deliveries)}
    first = {row_id: times for row_id, times in first.items() if row_id > 0}
    missing = len(acked) - len(first)
    if missing:
        raise RuntimeError(f"{missing} of {len(acked)} messages did not arrive within 30 s")
    return {
        "commit->receive": percentiles([(r - s) * 1000 for s, r in first.values()]),
        "ack->receive": percentiles([(r - acked[i - 1]) * 1000 for i, (_, r) in first.items()]),
    }


def parse_rates(text: str) -> list[float]:
    return [float(rate) for rate in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument(
        "--rates", type=parse_rates, default=[200.0, 1000.0], help="rows per second, e.g. 200,1000"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of producing")
    parser.add_argument("--runs", "--rounds", type=int, default=3, help="runs; medians are printed")
    args = parser.parse_args(argv)
    rates = ", ".join(f"{rate:g}" for rate in args.rates)
    print(
        f"broker {redact_url(args.url)}: listener and bare relay at {rates} rows/s,"
        f" {args.duration:g} s each, {args.runs} run(s)"
    )
    results: dict[float, dict[str, list[Result]]] = {
        rate: {relay: [] for relay in RELAYS} for rate in args.rates
    }
    for number in range(1, args.runs + 1):
        order = RELAYS if number % 2 else RELAYS[::-1]
        for rate in args.rates:
            for relay in order:
                result = measure(args.url, relay, rate, args.duration)
                label = f"run {number}, {rate:g} rows/s, {relay}"
                print(f"{label}: achieved {result.achieved:6.0f} rows/s")
                show(result.stats)
                show_cpu(result.relay_cpu, result.postgres_cpu, f"{result.backends} backends")
                results[rate][relay].append(result)
    for rate in args.rates:
        summarize(rate, results[rate])
    print("targets: commit->receive p50 <= 2 ms, p99 <= 10 ms;")
    print("  listener/bare CPU <= 0.7 at 200 rows/s, <= 1 at 1000 rows/s; p50 and p99 <= 1")


def summarize(rate: float, runs: dict[str, list[Result]]) -> None:
    """Print the medians over the runs of each relay at *rate*, and their ratios."""
    title = f"median of {len(runs['bare'])} runs" if len(runs["bare"]) > 1 else "1 run"
    print(f"{rate:g} rows/s, {title}:")
    medians = {}
    for relay, results in runs.items():
        stats = {name: median_stats([r.stats[name] for r in results]) for name in results[0].stats}
        relay_cpu = statistics.median(r.relay_cpu for r in results)
        postgres = [r.postgres_cpu for r in results if r.postgres_cpu is not None]
        postgres_cpu = statistics.median(postgres) if postgres else None
        print(f" {relay}:")
        show(stats)
        show_cpu(relay_cpu, postgres_cpu)
        medians[relay] = (stats["commit->receive"], relay_cpu, postgres_cpu)
    (listener_latency, listener_cpu, listener_pg), (bare_latency, bare_cpu, bare_pg) = (
        medians["listener"],
        medians["bare"],
    )
    ratios = [f"relay CPU {listener_cpu / bare_cpu:.2f}"]
    if listener_pg is not None and bare_pg is not None:
        ratios.append(f"PostgreSQL CPU {listener_pg / bare_pg:.2f}")
    ratios += [f"{key} {listener_latency[key] / bare_latency[key]:.2f}" for key in ("p50", "p99")]
    print(f" listener/bare: {', '.join(ratios)}")


def show(stats: dict[str, Stats]) -> None:
    for name, values in stats.items():
        print(f"  {name:16} ms: {format_stats(values)}")


def show_cpu(relay_cpu: float, postgres_cpu: float | None, note: str = "") -> None:
    postgres = "n/a" if postgres_cpu is None else f"{postgres_cpu:7.0f}"
    suffix = f" ({note})" if note else ""
    print(f"  CPU µs/msg: relay {relay_cpu:7.0f}  PostgreSQL {postgres}{suffix}")


if __name__ == "__main__":
    main()
