"""A RabbitMQ node of the test session's own, the only broker the tests administer.

Tests that add users or virtual hosts, close connections or stop the broker do it
on this node, never on the broker at ``$SIGNALBUS_TEST_RABBITMQ_URL``. The node has
its own name, AMQP and distribution ports, Erlang cookie and epmd, and its
configuration, data and logs in a temporary directory: it reads nothing from
``/etc/rabbitmq`` and shares nothing with a RabbitMQ already running on the machine.
It starts when a test first asks for it and is stopped, and its files removed, at
the end of the session.

Load the fixtures with ``pytest_plugins = ["tests.rabbitmq_node"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

#: The server's own scripts. On Debian the ones on PATH (``/usr/sbin``) are wrappers that
#: switch to the ``rabbitmq`` user and write the system node's startup log, so the
#: scripts behind them come first.
DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")

HOST = "127.0.0.1"
START_TIMEOUT = 90.0
CTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Ports:
    """The node's TCP ports: AMQP, Erlang distribution and its private epmd."""

    amqp: int
    dist: int
    epmd: int


#: Ports are picked below this one, out of Linux's default ephemeral range (32768 up).
#: A client retrying to connect to a stopped node's port from the ephemeral range can
#: connect to itself when the kernel picks that very port as its own (TCP simultaneous
#: open): the port is then taken, and the node cannot listen on it again.
EPHEMERAL_PORTS_START = 32768


def free_ports(count: int) -> list[int]:
    """Return *count* distinct TCP ports, free on ``127.0.0.1`` a moment ago, below the
    ephemeral range (see :data:`EPHEMERAL_PORTS_START`)."""
    chosen: list[int] = []
    pick = random.Random()
    while len(chosen) < count:
        port = pick.randrange(20000, EPHEMERAL_PORTS_START)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def find_scripts() -> Path:
    """Return the directory of ``rabbitmq-server`` and ``rabbitmqctl``; fail the test if none."""
    candidates = [DEBIAN_SCRIPTS]
    on_path = shutil.which("rabbitmq-server")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    pytest.fail(
        "rabbitmq-server is not installed (looked in "
        f"{', '.join(map(str, candidates))}); the tests that administer a broker start a "
        "RabbitMQ node of their own: install it, e.g. `apt-get install rabbitmq-server`",
        pytrace=False,
    )


def find_epmd() -> Path:
    """Return Erlang's ``epmd``, on PATH or next to ``erl``; fail the test if neither is."""
    for name in ("epmd", "erl"):
        found = shutil.which(name)
        if found is not None:
            epmd = Path(found).resolve().parent / "epmd"
            if epmd.is_file():
                return epmd
    pytest.fail("Erlang's epmd is not installed; rabbitmq-server needs it", pytrace=False)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until *port* accepts TCP connections while *process* runs; say whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return True
    return False


def answers_amqp(url: str) -> bool:
    """Say whether the broker at *url* accepts an AMQP connection now."""
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = 2
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPError:
        return False
    return True


class RabbitNode:
    """A RabbitMQ node in *base_dir*, reached only by its own name and ports.

    Building one starts nothing; :meth:`start` does. :meth:`ctl` is the one way the
    tests run ``rabbitmqctl``, and it always names this node.
    """

    def __init__(self, base_dir: Path, scripts: Path, epmd: Path) -> None:
        self.base_dir = base_dir
        self.scripts = scripts
        self.epmd = epmd
        self.name = f"signalbus-test-{secrets.token_hex(4)}@localhost"
        self.ports = Ports(*free_ports(3))
        self._processes: list[subprocess.Popen[bytes]] = []

    # -- where things are

    @property
    def home(self) -> Path:
        """``$HOME`` of the server and of ``rabbitmqctl``: where the cookie they share is."""
        return self.base_dir / "home"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    def url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """The AMQP URL of *vhost* on this node (guest may log in from localhost only)."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{credentials}@{HOST}:{self.ports.amqp}/{quote(vhost, safe='')}"

    def environment(self) -> dict[str, str]:
        """The environment of the server and of ``rabbitmqctl``: every path and port is ours.

        Inherited ``RABBITMQ_*`` and ``ERL_*`` variables are dropped, and every file the
        scripts would otherwise read from ``/etc/rabbitmq`` is named, so nothing of the
        machine's own node leaks in.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_ADDRESS=HOST,
            ERL_EPMD_PORT=str(self.ports.epmd),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.ports.amqp),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            # rabbitmqctl's own distribution port: any free one, not the shared range.
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONF_ENV_FILE=str(self.base_dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base_dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base_dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base_dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(self.base_dir / "rabbitmq.pid"),
        )
        return env

    # -- rabbitmqctl

    def ctl_command(self, *args: str) -> list[str]:
        """The ``rabbitmqctl`` command line for *args*, aimed at this node by name."""
        return [str(self.scripts / "rabbitmqctl"), "-n", self.name, *args]

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` on this node; fail the test if it fails."""
        result = subprocess.run(
            self.ctl_command(*args),
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"rabbitmqctl {' '.join(args)} failed on {self.name}: "
                        f"{result.stderr or result.stdout}")  # fmt: skip
        return result.stdout

    # -- starting and stopping

    def start(self) -> None:
        """Start the node and wait until it accepts AMQP; fail the test if it does not."""
        self._write_files()
        epmd = self._spawn([str(self.epmd), "-port", str(self.ports.epmd), "-address", HOST])
        if not wait_for_port(self.ports.epmd, epmd, 10):
            self._fail_to_start("its epmd did not start")
        with open(self.base_dir / "server.out", "wb") as out:
            server = self._spawn([str(self.scripts / "rabbitmq-server")], stdout=out)
        if not wait_for_port(self.ports.amqp, server, START_TIMEOUT):
            if server.poll() is not None:
                self._fail_to_start(f"rabbitmq-server exited with status {server.returncode}")
            self._fail_to_start(f"port {self.ports.amqp} still closed after {START_TIMEOUT:.0f} s")
        self.ctl("await_startup")
        if not answers_amqp(self.url()):
            self._fail_to_start(f"it refuses AMQP connections on port {self.ports.amqp}")

    def kill_server(self) -> subprocess.Popen[bytes]:
        """Kill the node's server hard (SIGKILL to its session), as a crash would; keep epmd.

        Returns the killed process: helpers of its session may outlive it briefly.
        """
        server = self._processes[-1]  # epmd is the first, the latest server the last
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        return server

    def start_server(self) -> subprocess.Popen[bytes]:
        """Start the server again after :meth:`kill_server`, with its name, ports and data;
        return its process without waiting for it."""
        with open(self.base_dir / "server.out", "ab") as out:
            return self._spawn([str(self.scripts / "rabbitmq-server")], stdout=out)

    def stop(self) -> None:
        """Shut the node down, and its epmd; kill what does not stop."""
        if self._processes and self._processes[-1].poll() is None:
            subprocess.run(self.ctl_command("shutdown"), env=self.environment(),
                           capture_output=True, timeout=CTL_TIMEOUT, check=False)  # fmt: skip
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._processes.clear()

    def _write_files(self) -> None:
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.base_dir / "rabbitmq-env.conf").write_text("# the test node's: empty\n")
        (self.base_dir / "rabbitmq.conf").write_text("# the test node's: defaults\n")
        (self.base_dir / "enabled_plugins").write_text("[].\n")

    def _spawn(
        self, command: list[str], stdout: int | IO[bytes] = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        # A session of its own, so that a stuck node can be killed with all its children.
        process = subprocess.Popen(
            command,
            env=self.environment(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(process)
        return process

    def _fail_to_start(self, reason: str) -> NoReturn:
        log = self.log_dir / f"{self.name}.log"
        tail = "".join(
            path.read_text(errors="replace")[-3000:]
            for path in (self.base_dir / "server.out", log)
            if path.is_file()
        )
        self.stop()
        pytest.fail(
            f"Could not start the tests' own RabbitMQ node {self.name}: {reason}.\n{tail}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """The session's own RabbitMQ node, started on first use and stopped at the end."""
    scripts, epmd = find_scripts(), find_epmd()
    with tempfile.TemporaryDirectory(prefix="signalbus-rabbitmq-") as base_dir:
        node = RabbitNode(Path(base_dir), scripts, epmd)
        try:
            node.start()
            yield node
        finally:
            node.stop()


@pytest.fixture
def rabbit_vhost_url(rabbit_node: RabbitNode) -> Iterator[str]:
    """The guest URL of a fresh virtual host on the session's own node; deleted afterwards."""
    vhost = f"signalbus-test-{uuid.uuid4().hex[:12]}"
    rabbit_node.ctl("add_vhost", vhost)
    try:
        rabbit_node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield rabbit_node.url(vhost)
    finally:
        rabbit_node.ctl("delete_vhost", vhost)
