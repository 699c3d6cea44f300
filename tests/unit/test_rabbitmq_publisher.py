"""What a Publisher checks before it connects: its URL, its timeout, its messages."""

from __future__ import annotations

import pytest
from flask import Flask

import signalbus.rabbitmq
from signalbus.errors import ConfigurationError, MissingSettingError, SignalBusError
from signalbus.rabbitmq import Message, Publisher, PublishError, publisher_from_config
from tests.publisher_checks import SECRET_IN_URL

URL = f"amqp://guest:{SECRET_IN_URL}@rabbitmq.invalid:5672/%2F"
REDACTED_URL = "amqp://guest:***@rabbitmq.invalid:5672/%2F"


def test_every_public_name_is_importable() -> None:
    for name in signalbus.rabbitmq.__all__:
        assert getattr(signalbus.rabbitmq, name) is not None


def test_publish_error_is_a_signalbus_error() -> None:
    assert issubclass(PublishError, SignalBusError)
    assert issubclass(PublishError, Exception)


def test_publisher_connects_lazily_and_hides_the_password() -> None:
    publisher = Publisher(URL, timeout=0.5)
    publisher.publish_messages([])  # an empty burst never connects
    assert publisher.url == REDACTED_URL
    assert SECRET_IN_URL not in repr(publisher)


@pytest.mark.parametrize(
    "url", ["http://guest:{}@localhost/", "amqp://guest:{}@localhost/?heartbeat=often"]
)
def test_invalid_url_does_not_leak_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Publisher(url.format(SECRET_IN_URL))
    assert isinstance(caught.value, ValueError)
    assert SECRET_IN_URL not in str(caught.value)
    assert "***" in str(caught.value)


def test_invalid_url_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="expected amqp:// or amqps://"):
        Publisher("http://localhost/")
    with pytest.raises(ValueError, match="heartbeat"):
        Publisher("amqp://localhost/?heartbeat=often")


@pytest.mark.parametrize("timeout", [0, -1, "soon"])
def test_invalid_timeout(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout must be a positive number"):
        Publisher(URL, timeout=timeout)  # type: ignore[arg-type]


def test_an_app_or_its_config_is_not_a_url() -> None:
    app = Flask(__name__)
    for wrong in (app, app.config):
        with pytest.raises(TypeError, match=r"use publisher_from_config\(app\.config\)") as caught:
            Publisher(wrong)  # type: ignore[arg-type]
        assert type(wrong).__name__ in str(caught.value)


def test_publisher_from_config() -> None:
    publisher = publisher_from_config(
        {"SIGNALBUS_RABBITMQ_URL": URL, "SIGNALBUS_RABBITMQ_TIMEOUT": "7.5"}
    )
    assert publisher.timeout == 7.5
    assert publisher.url == REDACTED_URL
    with pytest.raises(KeyError, match="SIGNALBUS_RABBITMQ_URL") as caught:
        publisher_from_config({})
    assert isinstance(caught.value, MissingSettingError)


@pytest.mark.parametrize("timeout", ["abc", "nan", float("inf"), 0, True])
def test_publisher_from_config_checks_the_timeout(timeout: object) -> None:
    config = {"SIGNALBUS_RABBITMQ_URL": URL, "SIGNALBUS_RABBITMQ_TIMEOUT": timeout}
    with pytest.raises(ValueError, match="SIGNALBUS_RABBITMQ_TIMEOUT must be a positive number"):
        publisher_from_config(config)


def test_publisher_from_config_checks_the_url() -> None:
    with pytest.raises(ConfigurationError, match="SIGNALBUS_RABBITMQ_URL must be a string"):
        publisher_from_config({"SIGNALBUS_RABBITMQ_URL": 5672})
    with pytest.raises(ConfigurationError, match="amqp://") as caught:
        publisher_from_config({"SIGNALBUS_RABBITMQ_URL": f"http://u:{SECRET_IN_URL}@h/"})
    assert SECRET_IN_URL not in str(caught.value)


def test_message_body_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="must be bytes, not str"):
        Message("text")  # type: ignore[arg-type]
