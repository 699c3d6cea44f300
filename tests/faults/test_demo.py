"""The embedded demo, ``python -m refapp.demo``, run as the README tells."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from pika.adapters.blocking_connection import BlockingChannel

from signalbus import embedded
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
COUNT = 10
PLACED, SHIPPED = 7, 3  # every third message ships an order
TIMEOUT = 120

RELAYED = re.compile(
    r"^relayed  (?P<key>order\.(placed|shipped)) +order=(?P<id>\d+) +(?P<body>\{.*\})  "
    r"(?P<ms>\d+\.\d) ms$",
    re.MULTILINE,
)
CONSUMED = re.compile(
    r"^consumed (?P<key>order\.(placed|shipped)) +order=(?P<id>\d+) +(?P<body>\{.*\})  "
    r"sent (?P<sent>\d+\.\d) ms, consumed (?P<consumed>\d+\.\d) ms$",
    re.MULTILINE,
)
_CONFIG_VARS = ("DATABASE_URL", "SIGNALBUS_RABBITMQ_URL", "SIGNALBUS_EXCHANGE")


def demo_env(**variables: str) -> dict[str, str]:
    """The test's environment without the demo's configuration, plus *variables*."""
    env = {key: value for key, value in os.environ.items() if key not in _CONFIG_VARS}
    return {**env, **variables}


def demo_command(count: int = COUNT, rate: float = 50) -> list[str]:
    return [sys.executable, "-m", "refapp.demo", "--count", str(count), "--rate", str(rate)]


def run_demo(env: dict[str, str]) -> str:
    """Run the demo to its end; return its output, checking it exited 0."""
    result = subprocess.run(
        demo_command(), env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check_relayed(matches: list[re.Match[str]]) -> None:
    """The messages of one demo run: every one once, with the expected routing keys,
    each with the id of its order."""
    keys = [match["key"] for match in matches]
    assert keys.count("order.placed") == PLACED and keys.count("order.shipped") == SHIPPED
    assert len({(match["key"], match["id"]) for match in matches}) == COUNT
    for match in matches:
        assert json.loads(match["body"])["id"] == int(match["id"])


def pending_rows(database_url: str) -> dict[str, int]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = ("orders", "order_placed_signal", "order_shipped_signal")
            count = "SELECT count(*) FROM {}"
            return {t: connection.execute(sa.text(count.format(t))).scalar_one() for t in tables}
    finally:
        engine.dispose()


# --- with DATABASE_URL -----------------------------------------------------------------------


def test_demo_with_database_url_prints_every_message_with_its_latency(database_url: str) -> None:
    secret = "s3cret-demo-pw"  # the test server trusts local connections: any password works
    url = sa.make_url(database_url).set(password=secret).render_as_string(hide_password=False)

    output = run_demo(demo_env(DATABASE_URL=url))

    check_relayed(list(RELAYED.finditer(output)))
    assert f"{COUNT} messages relayed" in output
    assert "***@" in output and secret not in output
    assert "broker:   none" in output
    counts = pending_rows(database_url)
    assert counts == {"orders": PLACED, "order_placed_signal": 0, "order_shipped_signal": 0}


# --- embedded --------------------------------------------------------------------------------


@pytest.fixture
def demo_home(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose user data directory is in *tmp_path*; its server's data dir.

    Afterwards a server the demo left running is stopped, and the test fails.
    """
    env = demo_env(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"))
    data_dir = tmp_path / "data" / "signalbus" / "postgres"
    yield env, data_dir
    if (data_dir / "pgdata" / "postmaster.pid").exists():
        embedded.start(data_dir, dbname="postgres").stop()
        pytest.fail("the demo left its embedded PostgreSQL running")


def postgres_processes_in(pgdata: Path) -> list[int]:
    """The pids of processes working in *pgdata* (a running server's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == pgdata.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_demo_without_configuration_runs_an_embedded_server_and_stops_it(
    demo_home: tuple[dict[str, str], Path],
) -> None:
    env, data_dir = demo_home

    output = run_demo(env)

    check_relayed(list(RELAYED.finditer(output)))
    assert "(embedded PostgreSQL, started in" in output
    assert str(data_dir) in output
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    assert postgres_processes_in(data_dir / "pgdata") == []


def test_demo_stops_cleanly_on_ctrl_c(demo_home: tuple[dict[str, str], Path]) -> None:
    env, data_dir = demo_home
    process = subprocess.Popen(
        demo_command(count=1000, rate=20),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        wait_for_line(process.stdout, "relayed ")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stdout + stderr
    assert "interrupted; stopped cleanly" in stdout
    assert "Traceback" not in stderr
    assert postgres_processes_in(data_dir / "pgdata") == []


def wait_for_line(stream: object, prefix: str, timeout: float = 60) -> str:
    """Read lines of *stream* until one starts with *prefix*; fail after *timeout* s."""

    def next_line_with_prefix() -> str | None:
        if not select.select([stream], [], [], 0.1)[0]:
            return None
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            pytest.fail("the demo ended before printing a message")
        return line if line.startswith(prefix) else None

    return wait_until(
        next_line_with_prefix, timeout, f"a line starting with {prefix!r}", interval=0
    )


# --- with a broker ---------------------------------------------------------------------------


@pytest.fixture
def demo_exchange(amqp_channel: BlockingChannel, amqp_queue: str) -> Iterator[str]:
    """A fresh topic exchange, with the test's queue bound to it."""
    exchange = f"signalbus-test-{uuid.uuid4().hex}"
    amqp_channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    amqp_channel.queue_bind(amqp_queue, exchange, routing_key="order.#")
    yield exchange
    amqp_channel.exchange_delete(exchange)


def test_demo_with_a_broker_publishes_every_message(
    database_url: str,
    amqp_url: str,
    amqp_channel: BlockingChannel,
    amqp_queue: str,
    demo_exchange: str,
) -> None:
    env = demo_env(
        DATABASE_URL=database_url, SIGNALBUS_RABBITMQ_URL=amqp_url, SIGNALBUS_EXCHANGE=demo_exchange
    )

    output = run_demo(env)

    printed = list(CONSUMED.finditer(output))
    check_relayed(printed)
    assert all(float(match["sent"]) <= float(match["consumed"]) for match in printed)
    password = urlsplit(amqp_url).password
    if password:
        assert f":{password}@" not in output and ":***@" in output
    received = drain(amqp_channel, amqp_queue)
    assert sorted((key, body) for key, _, body in received) == sorted(
        (match["key"], match["body"]) for match in printed
    )
    assert all(message_id.startswith(f"{table(key)}:") for key, message_id, _ in received)


def table(routing_key: str) -> str:
    return {"order.placed": "order_placed_signal", "order.shipped": "order_shipped_signal"}[
        routing_key
    ]


def drain(channel: BlockingChannel, queue: str) -> list[tuple[str, str, str]]:
    """Get every message of *queue*: (routing key, message id, body)."""
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((method.routing_key, properties.message_id, body.decode()))


# --- configuration mistakes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"DATABASE_URL": "not a url"}, "error: DATABASE_URL must be a PostgreSQL URL"),
        (
            {"DATABASE_URL": "postgresql://postgres:pw-s3cret@127.0.0.1:1/x"},
            "database error: OperationalError: connection failed",
        ),
    ],
)
def test_bad_database_configuration_is_one_line(variables: dict[str, str], message: str) -> None:
    result = subprocess.run(
        demo_command(),
        env=demo_env(**variables),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert message in output
    assert "Traceback" not in output and "pw-s3cret" not in output


def test_unreachable_broker_is_one_line(database_url: str) -> None:
    env = demo_env(
        DATABASE_URL=database_url, SIGNALBUS_RABBITMQ_URL="amqp://guest:pw-s3cret@127.0.0.1:1/"
    )
    result = subprocess.run(
        demo_command(), env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "error: cannot reach the broker at amqp://guest:***@127.0.0.1:1/" in output
    assert "Traceback" not in output and "pw-s3cret" not in output
