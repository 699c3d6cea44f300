"""Benchmark: commit-to-consumer latency and CPU per message of the listener and a bare relay.

    python -m bench.e2e_latency [--url AMQP_URL] [--rates 200,1000] [--duration 15] [--runs 3]
                                [--protocols new]

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

``--protocols`` (comma-separated, of :data:`bench.wake.PROTOCOLS`; default
``new``) names the wake-ups of the listener to measure: one listener per
protocol in every run, next to the bare relay, their order alternating between
runs. ``new`` is the current trigger function and a listener in the wake
protocol; ``classic``, :data:`bench.wake.CLASSIC_FUNCTION` installed once the
schema is, and a listener with ``SIGNALBUS_ALWAYS_NOTIFY``. The bare relay runs
once per rate and run, on the current function: holding no ``awake`` lock, it
gets a notification for every transaction either way. With more than one
protocol the listeners are named ``listener:new`` and ``listener:classic``, and
with both the ratios new/classic of the listeners' p50 and p99 of
``commit->receive`` and of their CPU per message are printed too.
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
from bench.wake import PROTOCOLS, install_classic_function, listener_environment
from signalbus.conninfo import libpq_conninfo
from signalbus.rabbitmq import redact_url

INSERT = "INSERT INTO order_placed_signal (payload) VALUES (%s)"
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
    """``flask --app refapp signalbus listen`` in a subprocess, its log in a file.

    *protocol* (of :data:`bench.wake.PROTOCOLS`) sets its environment.
    """

    def __init__(
        self,
        database_url: str,
        amqp_url: str,
        exchange: str,
        log_file: Path,
        protocol: str = "new",
    ) -> None:
        env = {
            **os.environ,
            **listener_environment(protocol),
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


def measure(amqp_url: str, relay: str, rate: float, duration: float, protocol: str) -> Result:
    """Run *relay* once at *rate*; return its latencies in ms (see :func:`latencies`) and CPU.

    *protocol* (of :data:`bench.wake.PROTOCOLS`) is the trigger function and the
    listener's environment; the bare relay is run with ``new``.
    """
    context = multiprocessing.get_context("spawn")
    database = f"signalbus_bench_e2e_{os.getpid()}"
    with (
        bench_database(database) as database_url,
        broker_topology(amqp_url) as (exchange, _purge),
        tempfile.TemporaryDirectory() as workdir,
    ):
        create_schema(database_url)
        conninfo = libpq_conninfo(database_url)
        if protocol == "classic":
            install_classic_function(conninfo)
        ready_r, ready_w = context.Pipe(duplex=False)
        consumer_end, parent_end = context.Pipe()
        consumer = context.Process(
            target=consume, args=(amqp_url, exchange, ready_w, consumer_end), daemon=True
        )
        consumer.start()
        log_file = Path(workdir) / f"{relay}.log"
        process: LoggedProcess
        if relay == "listener":
            process = Sidecar(database_url, amqp_url, exchange, log_file, protocol)
        else:
            process = BareRelay(database_url, amqp_url, exchange, log_file)
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


def parse_protocols(text: str) -> list[str]:
    """Return the protocols of comma-separated *text*, each of :data:`bench.wake.PROTOCOLS`."""
    protocols = [protocol.strip() for protocol in text.split(",")]
    if not set(protocols) <= set(PROTOCOLS) or len(set(protocols)) != len(protocols):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated subset of {', '.join(PROTOCOLS)}, each once"
        )
    return protocols


def relays(protocols: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Name the relays of a run: a listener per protocol, then the bare relay.

    Maps each name to its ``(relay, protocol)`` for :func:`measure`. The
    listener is just ``listener`` when it is the only one and is ``new``.
    """
    if list(protocols) == ["new"]:
        listeners = {"listener": ("listener", "new")}
    else:
        listeners = {f"listener:{protocol}": ("listener", protocol) for protocol in protocols}
    return {**listeners, "bare": ("bare", "new")}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument(
        "--rates", type=parse_rates, default=[200.0, 1000.0], help="rows per second, e.g. 200,1000"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of producing")
    parser.add_argument("--runs", "--rounds", type=int, default=3, help="runs; medians are printed")
    parser.add_argument(
        "--protocols",
        type=parse_protocols,
        default=["new"],
        help=f"the listener's wake-ups, comma-separated, of {','.join(PROTOCOLS)} (default: new)",
    )
    args = parser.parse_args(argv)
    named = relays(args.protocols)
    listeners = ", ".join(name for name in named if name != "bare")
    rates = ", ".join(f"{rate:g}" for rate in args.rates)
    print(
        f"broker {redact_url(args.url)}: {listeners} and bare relay at {rates} rows/s,"
        f" {args.duration:g} s each, {args.runs} run(s)"
    )
    results = run_all(args.url, named, args.rates, args.duration, args.runs)
    for rate in args.rates:
        summarize(rate, results[rate])
    print("targets: commit->receive p50 <= 2 ms, p99 <= 10 ms;")
    print("  listener/bare CPU <= 0.7 at 200 rows/s, <= 1 at 1000 rows/s; p50 and p99 <= 1")
    if len(args.protocols) == len(PROTOCOLS):
        print("  new/classic p50 and p99 <= 1.1")


def run_all(
    amqp_url: str,
    named: dict[str, tuple[str, str]],
    rates: Sequence[float],
    duration: float,
    runs: int,
) -> dict[float, dict[str, list[Result]]]:
    """Measure each relay of *named* (see :func:`relays`) at each rate, *runs* times.

    The relays' order alternates between runs. Prints every measure; returns
    them by rate and name.
    """
    results: dict[float, dict[str, list[Result]]] = {
        rate: {name: [] for name in named} for rate in rates
    }
    for number in range(1, runs + 1):
        order = list(named) if number % 2 else list(named)[::-1]
        for rate in rates:
            for name in order:
                relay, protocol = named[name]
                result = measure(amqp_url, relay, rate, duration, protocol)
                label = f"run {number}, {rate:g} rows/s, {name}"
                print(f"{label}: achieved {result.achieved:6.0f} rows/s")
                show(result.stats)
                show_cpu(result.relay_cpu, result.postgres_cpu, f"{result.backends} backends")
                results[rate][name].append(result)
    return results


@dataclass
class Medians:
    """One relay's medians over the runs at one rate."""

    stats: dict[str, Stats]
    relay_cpu: float
    postgres_cpu: float | None


def medians(results: list[Result]) -> Medians:
    """Return the medians of a relay's *results* at one rate."""
    stats = {name: median_stats([r.stats[name] for r in results]) for name in results[0].stats}
    postgres = [r.postgres_cpu for r in results if r.postgres_cpu is not None]
    return Medians(
        stats,
        statistics.median(r.relay_cpu for r in results),
        statistics.median(postgres) if postgres else None,
    )


def summarize(rate: float, runs: dict[str, list[Result]]) -> None:
    """Print the medians over the runs of each relay at *rate*, and their ratios.

    Each listener's over the bare relay's and, with both protocols, the
    ``new`` listener's over the ``classic`` one's.
    """
    title = f"median of {len(runs['bare'])} runs" if len(runs["bare"]) > 1 else "1 run"
    print(f"{rate:g} rows/s, {title}:")
    by_name: dict[str, Medians] = {}
    for name, results in runs.items():
        by_name[name] = medians(results)
        print(f" {name}:")
        show(by_name[name].stats)
        show_cpu(by_name[name].relay_cpu, by_name[name].postgres_cpu)
    for name in [name for name in by_name if name != "bare"]:
        print(f" {name}/bare: {ratios(by_name[name], by_name['bare'], 'relay CPU')}")
    if {"listener:new", "listener:classic"} <= by_name.keys():
        new, classic = by_name["listener:new"], by_name["listener:classic"]
        print(f" new/classic: {ratios(new, classic, 'listener CPU')}")


def ratios(numerator: Medians, denominator: Medians, cpu: str) -> str:
    """Return *numerator*/*denominator* of the relay's CPU (named *cpu*), its PostgreSQL
    backends' CPU and the p50 and p99 of ``commit->receive``."""
    parts = [f"{cpu} {numerator.relay_cpu / denominator.relay_cpu:.2f}"]
    if numerator.postgres_cpu is not None and denominator.postgres_cpu is not None:
        parts.append(f"PostgreSQL CPU {numerator.postgres_cpu / denominator.postgres_cpu:.2f}")
    latency, baseline = numerator.stats["commit->receive"], denominator.stats["commit->receive"]
    parts += [f"{key} {latency[key] / baseline[key]:.2f}" for key in ("p50", "p99")]
    return ", ".join(parts)


def show(stats: dict[str, Stats]) -> None:
    for name, values in stats.items():
        print(f"  {name:16} ms: {format_stats(values)}")


def show_cpu(relay_cpu: float, postgres_cpu: float | None, note: str = "") -> None:
    postgres = "n/a" if postgres_cpu is None else f"{postgres_cpu:7.0f}"
    suffix = f" ({note})" if note else ""
    print(f"  CPU µs/msg: relay {relay_cpu:7.0f}  PostgreSQL {postgres}{suffix}")


if __name__ == "__main__":
    main()
