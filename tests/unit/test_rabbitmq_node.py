"""The session's own RabbitMQ node is the only broker the tests administer (no server started)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.rabbitmq_node import RabbitNode

TESTS = Path(__file__).resolve().parent.parent
SCRIPTS = Path("/opt/rabbitmq/sbin")

#: What a RabbitMQ installed as a service answers to by default.
SYSTEM_NODE = "rabbit@localhost"
SYSTEM_PORTS = {5672, 25672, 4369}


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RabbitNode:
    # Variables a shell might carry for the machine's own node.
    monkeypatch.setenv("RABBITMQ_NODENAME", SYSTEM_NODE)
    monkeypatch.setenv("RABBITMQ_CONFIG_FILE", "/etc/rabbitmq/rabbitmq.conf")
    monkeypatch.setenv("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
    return RabbitNode(tmp_path, SCRIPTS, Path("/opt/erlang/bin/epmd"))


def test_ctl_names_the_node(node: RabbitNode) -> None:
    assert node.ctl_command("stop_app") == [
        str(SCRIPTS / "rabbitmqctl"), "-n", node.name, "stop_app"
    ]  # fmt: skip


def test_ctl_runs_only_the_command_naming_the_node(
    node: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def run(command: list[str], env: dict[str, str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 0, "ok", "")

    monkeypatch.setattr(subprocess, "run", run)
    assert node.ctl("close_all_connections", "--vhost", "v", "why") == "ok"
    [(command, env)] = calls
    assert command[1:3] == ["-n", node.name]
    assert env["RABBITMQ_NODENAME"] == node.name


def test_the_node_is_not_the_system_one(node: RabbitNode, tmp_path: Path) -> None:
    assert node.name != SYSTEM_NODE
    assert re.fullmatch(r"signalbus-test-[0-9a-f]{8}@localhost", node.name)
    assert RabbitNode(tmp_path, SCRIPTS, node.epmd).name != node.name
    assert not SYSTEM_PORTS & {node.ports.amqp, node.ports.dist, node.ports.epmd}
    assert len({node.ports.amqp, node.ports.dist, node.ports.epmd}) == 3
    assert node.url().startswith(f"amqp://guest:guest@127.0.0.1:{node.ports.amqp}/")


def test_environment_reads_nothing_of_the_system_node(node: RabbitNode, tmp_path: Path) -> None:
    env = node.environment()
    assert env["RABBITMQ_NODENAME"] == node.name
    assert env["RABBITMQ_NODE_PORT"] == str(node.ports.amqp)
    assert env["RABBITMQ_DIST_PORT"] == str(node.ports.dist)
    assert env["ERL_EPMD_PORT"] == str(node.ports.epmd)
    assert "ERL_FLAGS" not in env
    assert Path(env["HOME"]).is_relative_to(tmp_path)  # the Erlang cookie
    for key in (
        "RABBITMQ_CONF_ENV_FILE",
        "RABBITMQ_CONFIG_FILE",
        "RABBITMQ_ADVANCED_CONFIG_FILE",
        "RABBITMQ_ENABLED_PLUGINS_FILE",
        "RABBITMQ_MNESIA_BASE",
        "RABBITMQ_LOG_BASE",
        "RABBITMQ_PID_FILE",
    ):
        assert Path(env[key]).is_relative_to(tmp_path), key


def test_no_other_test_module_runs_the_rabbitmq_scripts() -> None:
    """Only tests/rabbitmq_node.py may start ``rabbitmq-server`` or run ``rabbitmqctl``."""
    script = re.compile(r"""["'](rabbitmqctl|rabbitmq-server)["']""")
    running = {
        path.relative_to(TESTS).as_posix()
        for path in TESTS.rglob("*.py")
        if path != Path(__file__).resolve() and script.search(path.read_text())
    }
    assert running == {"rabbitmq_node.py"}
