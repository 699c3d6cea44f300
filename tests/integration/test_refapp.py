"""The reference application: its HTTP API, its signals and their messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.cli import NoAppException
from flask.testing import FlaskClient

from refapp import config_from_env, create_app, database_uri
from refapp.models import Order, OrderPlacedSignal, OrderShippedSignal, db
from refapp.publishing import build_message
from signalbus import OutageError
from signalbus.model import BrokerBlocked
from signalbus.rabbitmq import Message


@pytest.fixture
def refapp(database_url: str) -> Iterator[Flask]:
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(refapp: Flask) -> FlaskClient:
    return refapp.test_client()


class FakePublisher:
    def __init__(self) -> None:
        self.bursts: list[list[Message]] = []
        self.is_blocked = False

    def publish_messages(self, messages: list[Message]) -> None:
        self.bursts.append(list(messages))

    def blocked(self) -> bool:
        return self.is_blocked


def rows(refapp: Flask, model: type) -> list[Any]:
    with refapp.app_context():
        columns = [*model.__table__.columns, sa.column("xmin")]
        return db.session.execute(sa.select(*columns).order_by(model.id)).all()


def place(client: FlaskClient, customer: str = "Ada", total_cents: int = 1250) -> dict:
    response = client.post("/orders", json={"customer": customer, "total_cents": total_cents})
    assert response.status_code == 201, response.json
    return response.json


def test_post_order_writes_order_and_signal_in_one_transaction(
    refapp: Flask, client: FlaskClient
) -> None:
    order = place(client)
    assert order["customer"] == "Ada" and order["total_cents"] == 1250
    assert order["shipped_at"] is None
    [order_row] = rows(refapp, Order)
    [signal_row] = rows(refapp, OrderPlacedSignal)
    assert order_row.id == order["id"]
    assert json.loads(signal_row.payload) == order
    assert order_row.xmin == signal_row.xmin  # written by the same transaction


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"customer": "", "total_cents": 1},
        {"customer": "x" * 101, "total_cents": 1},
        {"customer": "Ada", "total_cents": -1},
        {"customer": "Ada", "total_cents": "12"},
        {"customer": "Ada", "total_cents": True},
    ],
)
def test_post_order_rejects_bad_input(refapp: Flask, client: FlaskClient, body: Any) -> None:
    response = client.post("/orders", json=body)
    assert response.status_code == 400 and "error" in response.json
    assert rows(refapp, Order) == [] and rows(refapp, OrderPlacedSignal) == []


def test_ship_order(refapp: Flask, client: FlaskClient) -> None:
    order = place(client)
    response = client.post(f"/orders/{order['id']}/ship")
    assert response.status_code == 200 and response.json["shipped_at"]
    [signal_row] = rows(refapp, OrderShippedSignal)
    assert json.loads(signal_row.payload) == {
        "id": order["id"],
        "shipped_at": response.json["shipped_at"],
    }
    assert client.post(f"/orders/{order['id']}/ship").status_code == 409
    assert client.post("/orders/999/ship").status_code == 404
    assert len(rows(refapp, OrderShippedSignal)) == 1


def test_signals_are_printed_without_broker(
    refapp: Flask, client: FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    order = place(client)
    shipped = client.post(f"/orders/{order['id']}/ship").json
    capsys.readouterr()
    with refapp.app_context():
        assert db.signalbus.flushmany() == 2
    printed = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    assert [(key, json.loads(body)) for key, body in printed] == [
        ("order.placed", order),
        ("order.shipped", {"id": order["id"], "shipped_at": shipped["shipped_at"]}),
    ]


def test_signals_are_published_as_json_messages(refapp: Flask, client: FlaskClient) -> None:
    publisher = FakePublisher()
    refapp.extensions["refapp.publisher"] = publisher
    orders = [place(client, customer=f"c{i}") for i in range(3)]
    with refapp.app_context():
        assert db.signalbus.flushmany([OrderPlacedSignal]) == 3
    [burst] = publisher.bursts
    first = burst[0]
    assert [json.loads(message.body) for message in burst] == orders
    assert (first.exchange, first.routing_key) == ("signalbus", "order.placed")
    assert first.properties.content_type == "application/json"
    assert [message.properties.message_id for message in burst] == [
        f"order_placed_signal:{row}" for row in (1, 2, 3)
    ]
    assert rows(refapp, OrderPlacedSignal) == []


def test_no_burst_is_started_while_the_broker_blocks_publishing(
    refapp: Flask, client: FlaskClient
) -> None:
    publisher = FakePublisher()
    publisher.is_blocked = True
    refapp.extensions["refapp.publisher"] = publisher
    place(client, customer="c")
    with refapp.app_context(), pytest.raises(BrokerBlocked) as caught:
        db.signalbus.flushmany([OrderPlacedSignal])
    assert isinstance(caught.value, OutageError)
    assert publisher.bursts == [] and len(rows(refapp, OrderPlacedSignal)) == 1
    publisher.is_blocked = False
    with refapp.app_context():
        assert db.signalbus.flushmany([OrderPlacedSignal]) == 1


def test_message_exchange_and_burst_count_come_from_config(refapp: Flask) -> None:
    refapp.config.update(SIGNALBUS_EXCHANGE="events", SIGNALBUS_BURST_COUNT=2)
    with refapp.app_context():
        created_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        row = OrderShippedSignal(id=7, payload='{"id":1}', created_at=created_at)
        message = build_message(OrderShippedSignal, row)
        assert OrderShippedSignal.signalbus_burst_count == 2
    assert (message.exchange, message.routing_key) == ("events", "order.shipped")
    assert message.properties.message_id == "order_shipped_signal:7"
    assert OrderShippedSignal.signalbus_burst_count == 1000  # outside an app context


def test_config_from_env() -> None:
    config = config_from_env(
        {
            "DATABASE_URL": "postgresql://u:p%40ss@db:5432/shop",
            "SIGNALBUS_RABBITMQ_URL": "amqp://broker",
            "SIGNALBUS_BURST_COUNT": "50",
            "SIGNALBUS_SWEEP_INTERVAL": "5",
            "UNRELATED": "x",
        }
    )
    assert config == {
        "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://u:p%40ss@db:5432/shop",
        "SIGNALBUS_RABBITMQ_URL": "amqp://broker",
        "SIGNALBUS_BURST_COUNT": 50,
        "SIGNALBUS_SWEEP_INTERVAL": "5",
    }


def test_create_app_needs_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(NoAppException, match="DATABASE_URL"):
        create_app()


def test_triggers_command_hides_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"})
    result = app.test_cli_runner().invoke(args=["signalbus", "triggers"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Database error:")
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_bad_burst_count_in_the_environment_is_a_clear_error() -> None:
    with pytest.raises(NoAppException, match="SIGNALBUS_BURST_COUNT must be a positive integer"):
        config_from_env({"SIGNALBUS_BURST_COUNT": "lots"})


@pytest.mark.parametrize(
    "url", ["garbage", "postgresql://u:pw@h:port/db", "mysql://u:pw@h/db", "sqlite://"]
)
def test_database_url_must_be_postgresql(url: str) -> None:
    with pytest.raises(NoAppException, match="DATABASE_URL must be a PostgreSQL URL") as caught:
        database_uri(url)
    assert "pw" not in str(caught.value)


def test_postgres_scheme_is_taken() -> None:
    assert database_uri("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


def test_bad_broker_url_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = {
        "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://u@127.0.0.1/x",
        "SIGNALBUS_RABBITMQ_URL": "http://u:pw-s3cret@broker/",
    }
    with pytest.raises(NoAppException, match="expected amqp:// or amqps://") as caught:
        create_app(config)
    assert "pw-s3cret" not in str(caught.value)
