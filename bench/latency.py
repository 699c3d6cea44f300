"""Benchmark: commit-to-send latency of ``flask signalbus listen``, and its idle cost.

    python -m bench.latency [--rates 200,1000] [--duration 15] [--idle 60] [--runs 1]
                            [--protocols new] [--metrics]

A ``flask signalbus listen`` process (the real CLI, default options) serves
one signal model in a throwaway database, with the notification trigger
installed. First the database is left idle for ``--idle`` seconds and the
transactions it runs are counted (``xact_commit + xact_rollback`` of
``pg_stat_database``, read from another database so that the reads do not
count; the stats lag by up to 10 s at both ends of the window; a window in
which another backend, such as an autovacuum worker, visits the database is
measured again). Then, for each
rate, a producer inserts one row per transaction (an autocommit ``INSERT``:
the statement is its own transaction, committed before the server answers)
for ``--duration`` seconds, and the model's send writes the time each row is
sent to a file.

Two latencies are reported per row, as p50/p95/p99/max:

* ``insert->send``: from just before the producer sends the ``INSERT`` to the
  send call. It covers the insert, the commit (WAL flush), the notification,
  the listener's wake-up, the flush's ``DELETE ... RETURNING`` and the send
  call; an upper bound of commit-to-send.
* ``ack->send``: from the producer receiving the commit's answer to the send
  call; a lower bound of commit-to-send (it is negative when the listener sent
  the row before the producer heard its commit).

Every row is sent with ``send_signalbus_messages``, which does nothing but
note the time: the latency of a broker is not part of this. The producer, the
listener and PostgreSQL share the machine's cores. With ``--runs N`` each
statistic is the median over the runs.

``--protocols`` (comma-separated, of :data:`bench.wake.PROTOCOLS`; default
``new``) names the wake-ups to measure, each on a database and a listener of
its own, one after the other in every run (their order alternates between
runs): ``new``, the current trigger function and a listener in the wake
protocol; ``classic``, :data:`bench.wake.CLASSIC_FUNCTION` installed once the
schema is, and a listener with ``SIGNALBUS_ALWAYS_NOTIFY``. The statistics are
printed per protocol and, with both, the ratios new/classic of the p50 and p99
of ``insert->send``.

``--metrics`` measures, for each protocol, two listeners in every run (their
order alternating too): one without a metrics port, and one with
``--metrics-port 0`` that a scraper process GETs ``/metrics`` from every
second, like Prometheus, for as long as it runs. It also measures the
listener's CPU time (all threads, ``/proc/<pid>/stat``) from the start of
producing until every row is sent, per row; it prints each run's p50 and p99
of ``insert->send`` and CPU per row, the medians per listener, and the ratios
with/without the port of the p50, the p99 and the CPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.database import bench_database, server_url
from bench.e2e_latency import cpu_seconds
from bench.idle import measure_idle
from bench.process import LoggedProcess
from bench.stats import format_stats, median_stats, percentiles
from bench.wake import PROTOCOLS, install_classic_function, listener_environment
from signalbus import SignalBusMixin
from signalbus.config import ALWAYS_NOTIFY
from signalbus.conninfo import libpq_conninfo
from signalbus.triggers import install_trigger


class BenchSQLAlchemy(SignalBusMixin, SQLAlchemy):
    pass


db = BenchSQLAlchemy()


class LatencySignal(db.Model):
    signalbus_burst_count: ClassVar[int] = 100

    id = db.Column(db.BigInteger, primary_key=True)
    payload = db.Column(db.Text, nullable=False)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        cls.send_signalbus_messages([obj])

    @classmethod
    def send_signalbus_messages(cls, objs: Sequence[Any]) -> None:
        sent_at = time.time()
        lines = "".join(f"{obj.id} {sent_at!r}\n" for obj in objs)
        os.write(_sent_file(), lines.encode())


_sent_fd: int | None = None


def _sent_file() -> int:
    global _sent_fd
    if _sent_fd is None:
        path = os.environ["BENCH_SENT_FILE"]
        _sent_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return _sent_fd


def create_app(database_url: str | None = None) -> Flask:
    """The listener's app (``flask --app bench.latency``): ``$BENCH_DATABASE_URL``.

    ``$SIGNALBUS_ALWAYS_NOTIFY``, when set, is its ``SIGNALBUS_ALWAYS_NOTIFY``.
    """
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ["BENCH_DATABASE_URL"]
    app.config[ALWAYS_NOTIFY] = os.environ.get(ALWAYS_NOTIFY)
    db.init_app(app)
    return app


def create_schema(database_url: str) -> None:
    app = create_app(database_url)
    with app.app_context():
        db.create_all()
        with db.engine.begin() as connection:
            install_trigger(connection, LatencySignal.__tablename__)
        db.engine.dispose()


#: A listener measured: its protocol, and whether it serves (scraped) metrics.
Variant = tuple[str, bool]
#: Seconds between two scrapes of ``/metrics``, as Prometheus's default is 15 s, or 1 s here.
SCRAPE_INTERVAL = 1.0
SERVING = re.compile(r"Serving metrics, probes and the status page on (http://\S+/)")


def scrape(url: str, scraped: Event) -> None:
    """Scraper process: GET *url* every :data:`SCRAPE_INTERVAL` s; set *scraped* once it worked.

    Exits on the first failed GET, until then runs until terminated.
    """
    while True:
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=5) as response:
            if b"signalbus_sent" not in response.read():
                raise RuntimeError(f"{url}: no signalbus_sent metric")
        scraped.set()
        time.sleep(max(0.0, started + SCRAPE_INTERVAL - time.monotonic()))


class ListenerProcess(LoggedProcess):
    """``flask signalbus listen`` in a subprocess, its log in a file.

    *protocol* (of :data:`bench.wake.PROTOCOLS`) sets its environment. With
    *metrics* it gets ``--metrics-port 0``, and a scraper process GETs its
    ``/metrics`` every :data:`SCRAPE_INTERVAL` s until :meth:`stop`.
    """

    def __init__(
        self, database_url: str, workdir: Path, protocol: str = "new", metrics: bool = False
    ) -> None:
        self.sent_file = workdir / "sent"
        env = {
            **os.environ,
            **listener_environment(protocol),
            "BENCH_DATABASE_URL": database_url,
            "BENCH_SENT_FILE": str(self.sent_file),
        }
        command = [sys.executable, "-m", "flask", "--app", "bench.latency", "signalbus", "listen"]
        super().__init__(command + ["--metrics-port", "0"] * metrics, env, workdir / "listener.log")
        self.scraper: BaseProcess | None = None
        if metrics:
            match = SERVING.search(self.log_file.read_text())
            assert match, "the listener logged no metrics port"
            context = multiprocessing.get_context("spawn")
            scraped = context.Event()
            url = match[1] + "metrics"
            self.scraper = context.Process(target=scrape, args=(url, scraped), daemon=True)
            self.scraper.start()
            if not scraped.wait(30):
                self.stop()
                raise RuntimeError(f"no scrape of {url} worked within 30 s")

    def stop(self) -> None:
        """Stop the scraper, checking that its scrapes kept working; then the listener."""
        scraper, self.scraper = self.scraper, None
        if scraper is not None:
            failed = scraper.exitcode is not None
            scraper.terminate()
            scraper.join()
        super().stop()
        if scraper is not None and failed:
            raise RuntimeError("a scrape of /metrics failed; see the output above")

    def sent_times(self) -> dict[int, float]:
        if not self.sent_file.exists():
            return {}
        pairs = (line.split() for line in self.sent_file.read_text().splitlines())
        return {int(row_id): float(sent_at) for row_id, sent_at in pairs}


def produce(conninfo: str, rate: float, duration: float) -> dict[int, tuple[float, float]]:
    """Insert one row per transaction at *rate* per second; map ids to (before, acked)."""
    times: dict[int, tuple[float, float]] = {}
    insert = "INSERT INTO latency_signal (payload) VALUES ('x') RETURNING id"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        cursor = connection.cursor()
        cursor.execute(insert, prepare=True)  # warm up
        count = int(rate * duration)
        started = time.perf_counter()
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            before = time.time()
            cursor.execute(insert, prepare=True)
            acked = time.time()
            row = cursor.fetchone()
            assert row is not None
            times[row[0]] = (before, acked)
    return times


def measure_rate(
    conninfo: str, listener: ListenerProcess, rate: float, duration: float
) -> dict[str, dict[str, float]]:
    cpu_started = cpu_seconds(listener.process.pid)
    started = time.monotonic()
    produced = produce(conninfo, rate, duration)
    achieved = len(produced) / (time.monotonic() - started)
    deadline = time.monotonic() + 30
    while not set(produced) <= set(sent := listener.sent_times()):
        if time.monotonic() > deadline:
            raise RuntimeError("some rows were not sent within 30 s")
        time.sleep(0.1)
    cpu = cpu_seconds(listener.process.pid) - cpu_started
    in_ms = {
        "insert->send": [(sent[i] - before) * 1000 for i, (before, _) in produced.items()],
        "ack->send": [(sent[i] - acked) * 1000 for i, (_, acked) in produced.items()],
    }
    result = {name: percentiles(values) for name, values in in_ms.items()}
    result["rate"] = {"achieved": achieved}
    result["cpu"] = {"µs/row": cpu * 1e6 / len(produced)}
    return result


def run(rates: Sequence[float], duration: float, idle: float, variant: Variant) -> dict[str, Any]:
    """Measure *variant* once: the idle phase, then each rate, on a fresh database."""
    protocol, metrics = variant
    name = f"signalbus_bench_latency_{os.getpid()}"
    with bench_database(name) as database_url, tempfile.TemporaryDirectory() as workdir:
        create_schema(database_url)
        if protocol == "classic":
            install_classic_function(libpq_conninfo(database_url))
        server = libpq_conninfo(server_url())
        listener = ListenerProcess(database_url, Path(workdir), protocol, metrics)
        try:
            results: dict[str, Any] = {}
            if idle > 0:
                results["idle"] = measure_idle(server, name, idle)
            conninfo = libpq_conninfo(database_url)
            for rate in rates:
                results[rate] = measure_rate(conninfo, listener, rate, duration)
        finally:
            listener.stop()
        return results


def run_all(
    rates: Sequence[float],
    duration: float,
    idle: float,
    variants: Sequence[Variant],
    runs: int,
    verbose: bool = False,
) -> dict[Variant, list[dict[str, Any]]]:
    """Run each variant *runs* times, their order alternating between runs; map them to runs.

    *verbose* prints each run's p50 and p99 of ``insert->send`` and CPU per row.
    """
    results: dict[Variant, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for number in range(1, runs + 1):
        order = variants if number % 2 else variants[::-1]
        for variant in order:
            results[variant].append(result := run(rates, duration, idle, variant))
            for rate in rates if verbose else ():
                stats, cpu = result[rate]["insert->send"], result[rate]["cpu"]["µs/row"]
                print(
                    f"run {number}, {variant_name(variant)}, {rate:g} rows/s: insert->send"
                    f" p50 {stats['p50']:.3f} p99 {stats['p99']:.3f} ms, CPU {cpu:.0f} µs/row"
                )
    return results


def variant_name(variant: Variant) -> str:
    protocol, metrics = variant
    return f"{protocol}, --metrics-port 0 scraped" if metrics else protocol


def report(runs: list[dict[str, Any]], rates: Sequence[float], idle: float, cpu: bool) -> None:
    """Print the medians over *runs* (of one variant) of each rate, and the idle counts.

    With *cpu*, also the listener's CPU per row.
    """
    for rate in rates:
        achieved = statistics.median(run[rate]["rate"]["achieved"] for run in runs)
        print(f"{rate:g} rows/s (achieved {achieved:.0f}/s), ms, median of {len(runs)} run(s):")
        for key in ("insert->send", "ack->send"):
            stats = median_stats([run[rate][key] for run in runs])
            print(f"  {key:13} {format_stats(stats)}")
        if cpu:
            per_row = statistics.median(run[rate]["cpu"]["µs/row"] for run in runs)
            print(f"  listener CPU {per_row:.0f} µs/row")
    if idle > 0:
        counts = [run["idle"] for run in runs]
        print(f"idle: {counts} transactions in {idle:g} s (median {statistics.median(counts):g})")


def report_ratios(
    new: list[dict[str, Any]],
    classic: list[dict[str, Any]],
    rates: Sequence[float],
    label: str = "new/classic",
    cpu: bool = False,
) -> None:
    """Print, per rate, new/classic of the medians of ``insert->send``'s p50 and p99.

    *label* names the ratio; with *cpu*, that of the listener's CPU per row follows.
    """
    for rate in rates:
        new_stats, classic_stats = (
            median_stats([run[rate]["insert->send"] for run in runs]) for runs in (new, classic)
        )
        ratios = ", ".join(
            f"{key} {new_stats[key] / classic_stats[key]:.2f}" for key in ("p50", "p99")
        )
        if cpu:
            new_cpu, classic_cpu = (
                statistics.median(run[rate]["cpu"]["µs/row"] for run in runs)
                for runs in (new, classic)
            )
            ratios += f"; listener CPU/row {new_cpu / classic_cpu:.2f}"
        print(f"{label}, {rate:g} rows/s, insert->send: {ratios}")


def parse_protocols(text: str) -> list[str]:
    """Return the protocols of comma-separated *text*, each of :data:`bench.wake.PROTOCOLS`."""
    protocols = [protocol.strip() for protocol in text.split(",")]
    unknown = [protocol for protocol in protocols if protocol not in PROTOCOLS]
    if unknown or len(set(protocols)) != len(protocols):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated subset of {', '.join(PROTOCOLS)}, each once"
        )
    return protocols


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--rates", default="200,1000", help="rows per second, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds (0: skip)")
    parser.add_argument("--runs", type=int, default=1, help="runs; medians are reported")
    parser.add_argument(
        "--protocols",
        type=parse_protocols,
        default=["new"],
        help=f"wake-ups to measure, comma-separated, of {','.join(PROTOCOLS)} (default: new)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also measure each listener with --metrics-port 0, /metrics scraped every second",
    )
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    ports = (False, True) if args.metrics else (False,)
    variants = [(protocol, metrics) for protocol in args.protocols for metrics in ports]
    results = run_all(rates, args.duration, args.idle, variants, args.runs, args.metrics)
    for variant, runs in results.items():
        if len(variants) > 1 or args.protocols != ["new"]:
            print(f"protocol {variant_name(variant)}:")
        report(runs, rates, args.idle, args.metrics)
    if len(args.protocols) == len(PROTOCOLS):
        report_ratios(results["new", False], results["classic", False], rates)
    for protocol in args.protocols if args.metrics else ():
        with_port, without = results[protocol, True], results[protocol, False]
        report_ratios(with_port, without, rates, f"{protocol}: with/without metrics", cpu=True)


if __name__ == "__main__":
    main()
