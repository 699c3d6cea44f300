"""Benchmark: commit-to-consumer latency of the reference app through RabbitMQ.

    python -m bench.e2e_latency [--url AMQP_URL] [--rate 1000] [--duration 15]

The real sidecar, ``flask --app refapp signalbus listen``, serves a throwaway
database of the reference app (tables and notification triggers) and publishes
to a fresh topic exchange with a bound durable queue. A consumer process reads
that queue. The producer inserts one ``OrderPlacedSignal`` row per transaction
at ``--rate`` rows per second for ``--duration`` seconds; each row's payload
holds ``time.time()`` taken right before the statement that inserts and
commits it (an autocommit ``INSERT``: one round trip, the commit included).

The latency of a row is the consumer's ``time.time()`` on delivery minus that
time: insert and commit (WAL flush), notification, the listener's wake-up,
``DELETE ... RETURNING``, publishing, routing and delivery. Prints
p50/p95/p99/max in ms, and the rate achieved.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
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


def produce(conninfo: str, rate: float, duration: float) -> list[float]:
    """Insert one row per transaction at *rate* per second.

    Returns, for each row (row *n* at index *n - 1*), when the server's answer
    to its ``INSERT`` (so to its commit) arrived.
    """
    count = int(rate * duration)
    acked = []
    with psycopg.connect(conninfo, autocommit=True) as connection:
        cursor = connection.cursor()
        started = time.perf_counter()
        for number in range(1, count + 1):
            delay = started + number / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            payload = json.dumps({"id": number, "customer": f"customer-{number}", "t": time.time()})
            cursor.execute(INSERT, (payload,), prepare=True)
            acked.append(time.time())
    return acked


def measure(amqp_url: str, rate: float, duration: float) -> tuple[dict[str, Stats], float]:
    """Run once; return the latency percentiles in ms (see :func:`latencies`) and the rate."""
    context = multiprocessing.get_context("spawn")
    database = f"signalbus_bench_e2e_{os.getpid()}"
    with (
        bench_database(database) as database_url,
        broker_topology(amqp_url) as (exchange, _purge),
        tempfile.TemporaryDirectory() as workdir,
    ):
        create_schema(database_url)
        ready_r, ready_w = context.Pipe(duplex=False)
        consumer_end, parent_end = context.Pipe()
        consumer = context.Process(
            target=consume, args=(amqp_url, exchange, ready_w, consumer_end), daemon=True
        )
        consumer.start()
        sidecar = Sidecar(database_url, amqp_url, exchange, Path(workdir) / "listener.log")
        try:
            if not ready_r.poll(30):
                raise RuntimeError("the consumer did not start")
            started = time.monotonic()
            acked = produce(libpq_conninfo(database_url), rate, duration)
            achieved = len(acked) / (time.monotonic() - started)
            parent_end.send(len(acked))
            deliveries = parent_end.recv()
        finally:
            sidecar.stop()
            consumer.join(5)
            if consumer.is_alive():
                consumer.kill()
    return latencies(deliveries, acked), achieved


def latencies(deliveries: list[tuple[int, float, float]], acked: list[float]) -> dict[str, Stats]:
    """Percentiles in ms of ``commit->receive`` and ``ack->receive``.

    ``commit->receive`` starts right before the committing ``INSERT`` is sent
    (the measure asked for, an upper bound); ``ack->receive`` when its answer
    arrived (a lower bound: the commit's WAL flush and answer are left out).
    """
    first = {row_id: (sent, received) for row_id, sent, received in reversed(deliveries)}
    missing = len(acked) - len(first)
    if missing:
        raise RuntimeError(f"{missing} of {len(acked)} messages did not arrive within 30 s")
    return {
        "commit->receive": percentiles([(r - s) * 1000 for s, r in first.values()]),
        "ack->receive": percentiles([(r - acked[i - 1]) * 1000 for i, (_, r) in first.items()]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument("--rate", type=float, default=1000.0, help="rows per second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of producing")
    parser.add_argument("--runs", type=int, default=1, help="runs; medians are printed")
    args = parser.parse_args(argv)
    print(f"broker {redact_url(args.url)}: {args.rate:g} rows/s for {args.duration:g} s")
    runs = []
    for number in range(1, args.runs + 1):
        stats, achieved = measure(args.url, args.rate, args.duration)
        print(f"run {number}: achieved {achieved:6.0f} rows/s")
        show(stats)
        runs.append(stats)
    if len(runs) > 1:
        print(f"median of {len(runs)} runs:")
        show({name: median_stats([run[name] for run in runs]) for name in runs[0]})
    print("targets: commit->receive p50 <= 2 ms, p99 <= 10 ms")


def show(stats: dict[str, Stats]) -> None:
    for name, values in stats.items():
        print(f"  {name:16} ms: {format_stats(values)}")


if __name__ == "__main__":
    main()
