"""The deployment: docker-compose.yml and the app image's Dockerfile.

No Docker engine is needed: the file is parsed, its commands are run (with
``--help``) from this checkout, and the web health check against a live app.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from werkzeug.serving import make_server

import refapp
from refapp.models import OrderPlacedSignal, OrderShippedSignal
from refapp.publishing import DEFAULT_EXCHANGE
from signalbus.activity import Activity
from signalbus.backlog_watch import BacklogWatch
from signalbus.probes import STALL_SECONDS
from signalbus.server import StatusServer

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "web", "listener")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def healthcheck_command(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: no shell needed in the image"
    return test[1:]


def test_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "rabbitmq", "rabbitmq-setup", *APP_SERVICES}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management"
    for name in APP_SERVICES:
        assert services[name]["build"] == "."
        assert services[name]["image"] == services["web"]["image"]


def test_health_checks(services: dict[str, Any]) -> None:
    assert healthcheck_command(services["postgres"])[0] == "pg_isready"
    assert healthcheck_command(services["rabbitmq"]) == ["rabbitmq-diagnostics", "-q", "ping"]
    assert healthcheck_command(services["web"])[0] == "python"
    assert "/healthz" in healthcheck_command(services["listener"])[-1]


def test_start_order(services: dict[str, Any]) -> None:
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(services["rabbitmq-setup"]) == {"rabbitmq": "service_healthy"}
    assert depends_on(services["web"]) == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert depends_on(services["listener"]) == {
        "postgres": "service_healthy",
        "rabbitmq": "service_healthy",
        "migrate": "service_completed_successfully",
        "rabbitmq-setup": "service_completed_successfully",
    }


def test_restart_policies(services: dict[str, Any]) -> None:
    for one_shot in ("migrate", "rabbitmq-setup"):
        assert services[one_shot]["restart"] == "no"
    for name in ("postgres", "rabbitmq", "web", "listener"):
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
    assert services["listener"]["stop_grace_period"]


def test_app_services_are_configured_for_the_database_and_the_broker(
    services: dict[str, Any],
) -> None:
    postgres = services["postgres"]["environment"]
    rabbitmq = services["rabbitmq"]["environment"]
    for name in APP_SERVICES:
        database = urlsplit(services[name]["environment"]["DATABASE_URL"])
        assert (database.scheme, database.hostname, database.path) == (
            "postgresql",
            "postgres",
            "/" + postgres["POSTGRES_DB"],
        )
        assert database.username == postgres["POSTGRES_USER"]
        assert database.password == postgres["POSTGRES_PASSWORD"]
    for name in ("web", "listener"):
        broker = urlsplit(services[name]["environment"]["SIGNALBUS_RABBITMQ_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "rabbitmq", 5672)
        assert broker.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
        assert broker.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]


def test_broker_setup_declares_what_the_app_publishes_to(services: dict[str, Any]) -> None:
    script = services["rabbitmq-setup"]["command"][0]
    assert f"declare exchange name={DEFAULT_EXCHANGE} type=topic" in script
    assert f"declare binding source={DEFAULT_EXCHANGE} destination=orders" in script
    routing_keys = {OrderPlacedSignal.routing_key, OrderShippedSignal.routing_key}
    assert routing_keys == {"order.placed", "order.shipped"}  # all match 'order.#'
    assert "routing_key='order.#'" in script


@pytest.mark.parametrize("name", ["migrate", "listener"])
def test_flask_commands_exist(services: dict[str, Any], name: str) -> None:
    service = services[name]
    command = [str(BIN / service["command"][0]), *service["command"][1:], "--help"]
    env = {**os.environ, **service["environment"]}
    # In the checkout, as in the image's WORKDIR: refapp is not installed, flask finds it there.
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")


def test_web_serves_the_app_factory(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = services["web"]["command"]
    assert command[0] == "gunicorn" and "0.0.0.0:8000" in command
    module, _, call = command[-1].partition(":")
    assert (module, call) == ("refapp", "create_app()")
    monkeypatch.setenv("DATABASE_URL", services["web"]["environment"]["DATABASE_URL"])
    assert callable(refapp.create_app)
    assert refapp.create_app().url_map.bind("x").test("/orders", method="POST")


def test_gunicorn_comes_with_the_deploy_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deploy = pyproject["project"]["optional-dependencies"]["deploy"]
    assert any(requirement.startswith("gunicorn") for requirement in deploy)


@pytest.fixture
def live_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The refapp served on a free local port (no request here touches the database)."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    server = make_server("127.0.0.1", 0, refapp.create_app())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join()


def run_healthcheck(command: list[str], port: int) -> int:
    command = [
        part.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
            "127.0.0.1:9100", f"127.0.0.1:{port}"
        )
        for part in command
    ]
    command[0] = sys.executable
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_web_healthcheck_passes_when_the_app_answers(
    services: dict[str, Any], live_app: int
) -> None:
    assert run_healthcheck(healthcheck_command(services["web"]), live_app) == 0


def test_web_healthcheck_fails_when_nothing_answers(services: dict[str, Any]) -> None:
    with socket_without_server() as port:
        assert run_healthcheck(healthcheck_command(services["web"]), port) != 0


@pytest.fixture
def listener_probes() -> Iterator[tuple[int, list[float]]]:
    """A listener's status server on a free port, and the clock of its activity."""
    now = [0.0]
    activity = Activity([OrderPlacedSignal], ["database"], clock=lambda: now[0])
    server = StatusServer("127.0.0.1", 0, activity, BacklogWatch([], lambda models: {}, set), 60.0)
    server.start()
    yield server.port, now
    server.close()


def test_listener_healthcheck_passes_while_its_main_loop_turns(
    services: dict[str, Any], listener_probes: tuple[int, list[float]]
) -> None:
    port, _ = listener_probes
    assert run_healthcheck(healthcheck_command(services["listener"]), port) == 0


def test_listener_healthcheck_fails_once_its_main_loop_is_stuck(
    services: dict[str, Any], listener_probes: tuple[int, list[float]]
) -> None:
    port, now = listener_probes
    now[0] += STALL_SECONDS + 1
    assert run_healthcheck(healthcheck_command(services["listener"]), port) != 0


def test_listener_healthcheck_fails_when_nothing_answers(services: dict[str, Any]) -> None:
    with socket_without_server() as port:
        assert run_healthcheck(healthcheck_command(services["listener"]), port) != 0


@contextlib.contextmanager
def socket_without_server() -> Iterator[int]:
    """A local port that is bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_dockerfile_installs_the_package_with_its_deploy_extra() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert "COPY . ." in lines
    install = next(line for line in lines if "pip install" in line)
    assert "-e '.[deploy]'" in install
    assert "WORKDIR /app" in lines  # refapp is not installed: imported from the working dir
    assert "USER app" in lines


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/__pycache__"} <= set(ignored)
    for needed in ("pyproject.toml", "signalbus", "sql", "refapp", "migrations", "bench"):
        assert needed not in ignored and (ROOT / needed).exists()
