"""Benchmark: seconds from a server's return after an outage until rows flow again.

    python -m bench.recovery [--outage 20] [--runs 3] [--rate 50] [--steady 5] [--after 5]
                             [--logs /tmp/recovery_logs]

Everything runs on servers of its own, never on the machine's shared ones: a
throwaway PostgreSQL of :mod:`signalbus.embedded` (as :func:`bench.database.
private_server` makes it) and a RabbitMQ node of its own
(:class:`tests.rabbitmq_node.RabbitNode`: its own name, ports, epmd and
cookie), both on ports below the kernel's range of ephemeral ports, so that no
client's socket holds them when the servers start again. Each run, for each
of two scenarios (their order alternates between runs), gets a fresh
database of the reference app (tables and notification triggers) and a fresh
topic exchange with a bound durable queue; then:

* the real sidecar, ``flask --app refapp signalbus listen`` (default options),
  relays ``OrderPlacedSignal`` rows to the exchange;
* a consumer thread, with its own pika connection, acks each message after
  noting when it arrived and the sequence number in its body; it reconnects
  every 50 ms while the broker is away;
* a producer thread inserts one row per transaction (an autocommit
  ``INSERT``) at ``--rate`` rows/s, its payload holding a sequence number. A
  row counts as committed when the server answered its ``INSERT``; an
  ``INSERT`` that failed does not count, and while the server is away the
  producer reconnects every 50 ms.

After ``--steady`` seconds of flow (and the consumer holding every row so
far), the server under test goes down for ``--outage`` seconds, then starts
again:

* ``postgres``: ``pg_ctl stop -m fast`` (open sessions are rolled back and
  cut), then ``pg_ctl start`` on the same port and data directory. No row is
  committed meanwhile.
* ``rabbitmq``: SIGKILL to the node's whole process group (``beam.smp`` and
  its helpers; the harsher of a kill and ``rabbitmqctl stop_app``: no
  connection is closed in order, nothing is flushed), then ``rabbitmq-server``
  again, with the same node name, ports and data. The consumer loses its
  connection too; rows committed meanwhile wait in the table.

``up`` is when the server accepts connections again: the start of the first
connection attempt that succeeds (a psycopg connection, or an AMQP connection
of a probe), one attempt every 50 ms from the moment the server is started.
The producer keeps going for ``--after`` seconds after ``up`` (and until the
consumer has caught up), then stops; the consumer must then get every
committed row, within 120 s. Per run, in seconds from ``up``:

* ``recovery``: until the first arrival of a row committed after the server
  went down (so published after it came back: for ``rabbitmq`` not a message
  the node already held). Its resolution is the producer's and the
  consumer's 50 ms reconnect polls and the rows' spacing (20 ms at 50 rows/s);
  it can be slightly negative when the listener reconnected before the probe.
* ``drained``: until the first arrival at which every row committed so far
  has arrived: the backlog of the outage is gone (for ``postgres`` there is
  none, and it is the recovery of the flow of new rows).

Also printed: ``boot``, from starting the server until ``up``; the rows
committed, the ``INSERT`` statements that failed, duplicates (deliveries beyond the
first of a row: at-least-once allows them) and rows lost (none allowed: the
exit status is 1 otherwise). Then the medians over the runs, against the
target of issue 10: rows flow again within 2 s of the server accepting
connections. The sidecar's log of each run is kept in ``--logs``; a run that
misses the target prints the log's lines around the outage.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import math
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pika
import pika.exceptions
import psycopg

from bench import polling
from bench.database import SERVER_URL_VARIABLE, bench_database, private_server
from bench.e2e_latency import INSERT, Sidecar, create_schema
from bench.stats import median_stats
from bench.throughput import ROUTING_KEY
from signalbus import embedded
from signalbus.conninfo import libpq_conninfo
from tests.rabbitmq_node import Ports, RabbitNode, answers_amqp, find_epmd, find_scripts

SCENARIOS = ("postgres", "rabbitmq")
#: Issue 10: rows flow again within this many seconds of the server accepting connections.
TARGET = 2.0
#: Seconds between two connection attempts of the probe, the producer and the consumer.
POLL = 0.05
#: Seconds the consumer gets to receive every committed row once the producer stopped.
DRAIN_TIMEOUT = 120.0
#: Seconds a server gets to accept connections again once started.
START_TIMEOUT = 120.0


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll *condition* every :data:`POLL` s; say whether it held within *timeout* s."""
    return polling.wait_until(condition, timeout, POLL)


def wait_until_up(answers: Callable[[], bool], starting: Callable[[], bool]) -> float:
    """Try *answers* every :data:`POLL` s while *starting* holds; return when the first
    attempt that succeeded began (``time.monotonic()``)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        attempt = time.monotonic()
        if answers():
            return attempt
        if not starting():
            raise RuntimeError("the server's start failed")
        if attempt > deadline:
            raise RuntimeError(f"the server did not accept connections within {START_TIMEOUT} s")
        time.sleep(max(0.0, attempt + POLL - time.monotonic()))


# --- the servers and their outages --------------------------------------------------------------


def stable_ports(count: int) -> list[int]:
    """Return *count* ports free on ``127.0.0.1``, below the kernel's range of ephemeral ports.

    A server started again must bind its port again: one of the ephemeral range
    may meanwhile be the local end of a client's connection (or of one in
    ``TIME_WAIT``), and RabbitMQ then refuses to start (``dist_port_already_used``).
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for port in random.sample(range(low // 2, low), low - low // 2):
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports below {low}")


@contextlib.contextmanager
def private_postgres(directory: Path) -> Iterator[embedded.EmbeddedPostgres]:
    """Yield a handle on the throwaway server of :func:`private_server` in *directory*,
    moved to a port of :func:`stable_ports`."""
    with private_server(directory):
        server = embedded.start(directory, dbname="postgres")  # attaches: started is False
        server.stop()
        server.port = stable_ports(1)[0]
        server.start_again(ephemeral=True)
        os.environ[SERVER_URL_VARIABLE] = server.url  # for bench_database; restored on exit
        yield server


@contextlib.contextmanager
def private_node(directory: Path) -> Iterator[RabbitNode]:
    """Start a RabbitMQ node of our own in *directory*, on :func:`stable_ports`; yield it;
    stop it."""
    node = RabbitNode(directory, find_scripts(), find_epmd())
    node.ports = Ports(*stable_ports(3))
    try:
        node.start()
        yield node
    finally:
        node.stop()


def postgres_answers(conninfo: str) -> bool:
    try:
        psycopg.connect(conninfo, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def group_alive(group: int) -> bool:
    """Whether a process of process group *group* still runs (zombies aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _parent, process_group = stat.read_text().rpartition(")")[2].split()[:3]
            if int(process_group) == group and state != "Z":
                return True
    return False


class Outage(Protocol):
    """Takes one server down, and starts it again."""

    name: str

    def down(self) -> None: ...

    def up(self) -> float:
        """Start the server; return when it accepted connections (see :func:`wait_until_up`)."""
        ...


class PostgresOutage:
    """Fast shutdown of the private PostgreSQL, then a start on the same port and data."""

    name = "postgres"

    def __init__(self, server: embedded.EmbeddedPostgres) -> None:
        self.server = server
        self.conninfo = libpq_conninfo(server.url)

    def down(self) -> None:
        self.server.stop()

    def up(self) -> float:
        with ThreadPoolExecutor(1) as pool:
            start = pool.submit(self.server.start_again, ephemeral=True)
            try:
                return wait_until_up(
                    lambda: postgres_answers(self.conninfo),
                    lambda: not start.done() or start.exception() is None,
                )
            finally:
                start.result()


class RabbitOutage:
    """SIGKILL to the private node's process group, then ``rabbitmq-server`` again."""

    name = "rabbitmq"

    def __init__(self, node: RabbitNode) -> None:
        self.node = node

    def down(self) -> None:
        server = self.node.kill_server()
        if not wait_until(lambda: not group_alive(server.pid), 30):
            raise RuntimeError("the killed RabbitMQ node's processes did not end within 30 s")

    def up(self) -> float:
        server = self.node.start_server()
        url = self.node.url()
        try:
            return wait_until_up(lambda: answers_amqp(url), lambda: server.poll() is None)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the node's output and log:\n{self.logs()}") from None

    def logs(self) -> str:
        files = [self.node.base_dir / "server.out", self.node.log_dir / f"{self.node.name}.log"]
        return "".join(path.read_text(errors="replace")[-3000:] for path in files if path.exists())


def declare_topology(url: str, name: str) -> None:
    """Declare topic exchange *name* and durable queue *name* bound to it for the rows.

    As :func:`bench.throughput.broker_topology`, but nothing is deleted (the
    node is thrown away at the end): a connection does not outlive the node's kill.
    """
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare(name, "topic", durable=True)
        channel.queue_declare(name, durable=True)
        channel.queue_bind(name, name, ROUTING_KEY)
    finally:
        connection.close()


# --- the producer and the consumer --------------------------------------------------------------


class Producer:
    """Inserts one row per transaction at *rate* rows/s in a thread, through outages."""

    def __init__(self, conninfo: str, rate: float) -> None:
        self.conninfo = conninfo
        self.interval = 1 / rate
        self.lock = threading.Lock()
        #: Sequence number -> when the server answered its ``INSERT`` (``time.monotonic()``).
        self.commits: dict[int, float] = {}
        self.failed = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def committed(self) -> dict[int, float]:
        with self.lock:
            return dict(self.commits)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop inserting; raise what stopped the thread, if anything did."""
        self.stopping.set()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("the producer failed") from self.error

    def _connect(self) -> psycopg.Connection[Any] | None:
        try:
            return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2)
        except psycopg.OperationalError:
            self.stopping.wait(POLL)
            return None

    def _run(self) -> None:
        try:
            self._insert_rows()
        except BaseException as error:  # reported by stop()
            self.error = error

    def _insert_rows(self) -> None:
        connection = None
        numbers = itertools.count(1)
        due = time.monotonic()
        while not self.stopping.is_set():
            if connection is None:
                connection = self._connect()
                continue
            if self.stopping.wait(max(0.0, due - time.monotonic())):
                break
            number = next(numbers)
            try:
                connection.execute(INSERT, (json.dumps({"seq": number}),))
            except psycopg.OperationalError:
                self.failed += 1
                connection.close()
                connection = None
                continue
            committed = time.monotonic()
            with self.lock:
                self.commits[number] = committed
            due = max(due + self.interval, committed)  # no burst to catch up after an outage
        if connection is not None:
            connection.close()


class Consumer:
    """Receives the rows' messages in a thread, through broker outages; acks each."""

    def __init__(self, url: str, queue: str) -> None:
        self.parameters = pika.URLParameters(url)
        self.parameters.connection_attempts = 1
        self.parameters.socket_timeout = 2
        self.queue = queue
        self.lock = threading.Lock()
        #: (sequence number, ``time.monotonic()`` on arrival), in the order of arrival.
        self.arrivals: list[tuple[int, float]] = []
        self.seen: set[int] = set()
        self.connections = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop consuming; raise what stopped the thread, if anything did."""
        self.stopping.set()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("the consumer failed") from self.error

    def has(self, numbers: Iterable[int]) -> bool:
        """Whether every row of *numbers* has arrived."""
        with self.lock:
            return all(number in self.seen for number in numbers)

    def _on_message(
        self, channel: Any, method: Any, _properties: pika.BasicProperties, body: bytes
    ) -> None:
        arrived = time.monotonic()
        number = json.loads(body)["seq"]
        with self.lock:
            self.arrivals.append((number, arrived))
            self.seen.add(number)
        channel.basic_ack(method.delivery_tag)

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._consume()
        except BaseException as error:  # reported by stop()
            self.error = error

    def _consume(self) -> None:
        """Consume on one connection until it is lost or the consumer stops."""
        try:
            connection = pika.BlockingConnection(self.parameters)
        except pika.exceptions.AMQPError:
            self.stopping.wait(POLL)
            return
        self.connections += 1
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1000)
            channel.basic_consume(self.queue, self._on_message)
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=POLL)
        except pika.exceptions.AMQPError:
            self.stopping.wait(POLL)  # the node went away, or its queue is not back yet
        finally:
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()


# --- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    outage: float
    rate: float
    steady: float
    after: float


@dataclass
class Timeline:
    """When the server went down, was started again and accepted connections again."""

    down: float
    started: float
    up: float


@dataclass
class Result:
    """One scenario's numbers in one run (seconds from ``up``; ``inf``: never)."""

    recovery: float
    drained: float
    boot: float
    rows: int
    failed: int
    duplicates: int
    lost: int
    #: Rows whose ``INSERT`` failed, but that arrived: their commit went through.
    extra: int

    def numbers(self) -> dict[str, float]:
        return {"recovery": self.recovery, "drained": self.drained, "boot": self.boot}


def recovery_seconds(
    commits: dict[int, float], arrivals: list[tuple[int, float]], timeline: Timeline
) -> float:
    """From ``up`` to the first arrival of a row committed after the server went down."""
    later = [arrived for number, arrived in arrivals if commits.get(number, 0.0) > timeline.down]
    return min(later, default=math.inf) - timeline.up


def drained_seconds(
    commits: dict[int, float], arrivals: list[tuple[int, float]], timeline: Timeline
) -> float:
    """From ``up`` to the first arrival at which every row committed before it has arrived."""
    first: dict[int, float] = {}
    for number, arrived in arrivals:
        first.setdefault(number, arrived)
    rows = sorted(commits.items(), key=lambda row: row[1])
    committed = [at for _, at in rows]
    #: The last of the first arrivals of the rows committed up to each row.
    latest = list(itertools.accumulate((first.get(n, math.inf) for n, _ in rows), max))
    for _, arrived in arrivals:
        if arrived >= timeline.up:
            count = bisect.bisect_left(committed, arrived)
            if count == 0 or latest[count - 1] <= arrived:
                return arrived - timeline.up
    return math.inf


def run_outage(
    outage: Outage, producer: Producer, consumer: Consumer, settings: Settings
) -> Timeline:
    """Let rows flow, take the server down for the outage, start it again, let rows flow."""
    started = time.monotonic()
    steady = wait_until(
        lambda: time.monotonic() > started + settings.steady and consumer.has(producer.committed()),
        settings.steady + 30,
    )
    if not steady:
        raise RuntimeError("the rows did not flow before the outage")
    stopping = time.monotonic()
    outage.down()
    down = time.monotonic()
    try:
        time.sleep(max(0.0, stopping + settings.outage - time.monotonic()))  # the outage itself
    except BaseException:  # Ctrl-C: the cleanup needs the server (to drop the database)
        with contextlib.suppress(Exception):
            outage.up()
        raise
    starting = time.monotonic()
    up = outage.up()
    wait_until(
        lambda: time.monotonic() > up + settings.after and consumer.has(producer.committed()),
        settings.after + DRAIN_TIMEOUT,
    )
    return Timeline(down, starting, up)


def run_once(
    outage: Outage, node: RabbitNode, settings: Settings, log_file: Path
) -> tuple[Result, Timeline]:
    """One run of *outage* in a fresh database, exchange and queue, with a fresh sidecar."""
    name = f"signalbus-recovery-{os.getpid()}-{log_file.stem}"
    amqp_url = node.url()
    with bench_database(f"signalbus_bench_recovery_{os.getpid()}") as database_url:
        create_schema(database_url)
        declare_topology(amqp_url, name)
        sidecar = Sidecar(database_url, amqp_url, name, log_file)
        consumer = Consumer(amqp_url, name)
        producer = Producer(libpq_conninfo(database_url), settings.rate)
        try:
            consumer.start()
            producer.start()
            timeline = run_outage(outage, producer, consumer, settings)
            producer.stop()
            wait_until(lambda: consumer.has(producer.committed()), DRAIN_TIMEOUT)
            consumer.stop()
        finally:
            producer.stopping.set()
            consumer.stopping.set()
            sidecar.stop()
    commits = producer.committed()
    arrivals = consumer.arrivals
    result = Result(
        recovery=recovery_seconds(commits, arrivals, timeline),
        drained=drained_seconds(commits, arrivals, timeline),
        boot=timeline.up - timeline.started,
        rows=len(commits),
        failed=producer.failed,
        duplicates=len(arrivals) - len(consumer.seen),
        lost=len(commits.keys() - consumer.seen),
        extra=len(consumer.seen - commits.keys()),
    )
    return result, timeline


# --- reporting ----------------------------------------------------------------------------------


def log_excerpt(log_file: Path, start: float, end: float) -> list[str]:
    """The lines of the sidecar's log stamped from *start* to *end* (``time.time()``), and
    the unstamped lines (tracebacks) that follow them."""
    lines, inside = [], False
    for line in log_file.read_text().splitlines():
        with contextlib.suppress(ValueError):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            inside = start <= stamp <= end
        if inside:
            lines.append(line)
    return lines


def show_run(label: str, result: Result) -> None:
    print(
        f"{label}: recovery {result.recovery:5.2f} s, drained {result.drained:5.2f} s"
        f" (boot {result.boot:5.2f} s); {result.rows:,} rows, {result.failed} INSERTs failed"
        f" ({result.extra} of them arrived), {result.duplicates} duplicates, {result.lost} lost",
        flush=True,
    )


def show_log(log_file: Path, timeline: Timeline, result: Result) -> None:
    """Print the sidecar's log around the outage of a run that missed the target."""
    wall = time.time() - time.monotonic()
    end = timeline.up + min(result.recovery, DRAIN_TIMEOUT) + 2
    print(f"  missed the {TARGET:g} s target; {log_file}, around the outage:")
    for line in log_excerpt(log_file, wall + timeline.down - 2, wall + end)[:60]:
        print(f"    {line}")


def summarize(runs: dict[str, list[Result]]) -> None:
    """Print the medians over the runs of each scenario, and the target."""
    print(f"\nmedians of {len(runs[SCENARIOS[0]])} run(s), seconds from the server's return:")
    for scenario, results in runs.items():
        medians = median_stats([result.numbers() for result in results])
        rows = sum(result.rows for result in results)
        duplicates = sum(result.duplicates for result in results)
        lost = sum(result.lost for result in results)
        verdict = "met" if medians["recovery"] <= TARGET else "MISSED"
        print(
            f"  {scenario:9} recovery {medians['recovery']:5.2f}  drained {medians['drained']:5.2f}"
            f"  (boot {medians['boot']:5.2f});  all runs: {rows:,} rows, {duplicates} duplicates,"
            f" {lost} lost; target {verdict}"
        )
    print(f"target (issue 10): rows flow again within {TARGET:g} s of the server's return")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the server is down")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are printed")
    parser.add_argument("--rate", type=float, default=50.0, help="rows inserted per second")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of flow before")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of flow after")
    parser.add_argument(
        "--logs", type=Path, default=Path("/tmp/recovery_logs"), help="keeps the sidecar's logs"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rate <= 0 or args.outage < 0:
        parser.error("--runs must be at least 1, --rate positive, --outage not negative")
    settings = Settings(args.outage, args.rate, args.steady, args.after)
    args.logs.mkdir(parents=True, exist_ok=True)
    print(
        f"private PostgreSQL and RabbitMQ; each down {args.outage:g} s (postgres: fast shutdown,"
        f" rabbitmq: SIGKILL) with {args.rate:g} rows/s, {args.runs} run(s)",
        flush=True,
    )
    runs: dict[str, list[Result]] = {scenario: [] for scenario in SCENARIOS}
    with (
        tempfile.TemporaryDirectory(prefix="signalbus-recovery-") as workdir,
        private_postgres(Path(workdir) / "postgres") as postgres,
        private_node(Path(workdir) / "rabbitmq") as node,
    ):
        outages: dict[str, Outage] = {
            "postgres": PostgresOutage(postgres),
            "rabbitmq": RabbitOutage(node),
        }
        for number in range(1, args.runs + 1):
            for scenario in SCENARIOS if number % 2 else SCENARIOS[::-1]:
                log_file = args.logs / f"{scenario}-run{number}.log"
                result, timeline = run_once(outages[scenario], node, settings, log_file)
                show_run(f"run {number}, {scenario:8}", result)
                if not result.recovery <= TARGET:
                    show_log(log_file, timeline, result)
                runs[scenario].append(result)
    summarize(runs)
    lost = sum(result.lost for results in runs.values() for result in results)
    if lost:
        raise SystemExit(f"{lost} committed rows never arrived")


if __name__ == "__main__":
    main()
