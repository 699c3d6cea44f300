"""The exception hierarchy: one base, and the built-in parents callers relied on."""

from __future__ import annotations

import pytest

from signalbus import ConfigurationError, NotASignalModelError, SignalBusError
from signalbus.config import listener_settings, publisher_settings
from signalbus.errors import FailureDescriber, MissingSettingError


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigurationError, ValueError),
        (MissingSettingError, KeyError),
        (MissingSettingError, ValueError),
        (NotASignalModelError, RuntimeError),
    ],
)
def test_every_error_is_a_signalbus_error_and_keeps_its_builtin_parent(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, SignalBusError) and issubclass(error, builtin)


def test_a_missing_setting_reads_as_a_sentence() -> None:
    with pytest.raises(MissingSettingError) as caught:
        publisher_settings({})
    assert str(caught.value).startswith("SIGNALBUS_RABBITMQ_URL is not set: give the RabbitMQ URL")


def test_settings_fall_back_to_the_defaults() -> None:
    settings = listener_settings({"SIGNALBUS_CHANNEL": None}, sweep_interval=5)
    assert (settings.channel, settings.sweep_interval, settings.probe_interval) == (
        "signalbus",
        5.0,
        60.0,
    )


def test_publisher_settings_never_show_the_password() -> None:
    settings = publisher_settings({"SIGNALBUS_RABBITMQ_URL": "amqp://u:pa55@h/"})
    assert "pa55" not in repr(settings)
    assert settings.timeout == 30.0


def test_the_publisher_errors_that_mean_an_outage() -> None:
    from signalbus import OutageError, rabbitmq

    outages = {rabbitmq.ConnectionFailed, rabbitmq.ChannelClosed, rabbitmq.ConfirmTimeout}
    for error in (*outages, rabbitmq.MessageNacked, rabbitmq.MessageReturned):
        assert issubclass(error, rabbitmq.PublishError)
        assert issubclass(error, OutageError) == (error in outages)


def test_each_distinct_failure_shows_its_traceback_once() -> None:
    describe = FailureDescriber()

    def raised(error: Exception) -> Exception:
        try:
            raise error
        except Exception as caught:
            return caught

    first = describe(raised(ValueError("bad row 1")))
    assert first.startswith(":\nTraceback") and "ValueError: bad row 1" in first
    assert describe(raised(ValueError("bad row 1"))) == ": ValueError: bad row 1"
    assert describe(raised(ValueError("bad row 2"))).startswith(":\nTraceback")
    assert describe(raised(KeyError("bad row 1"))).startswith(":\nTraceback")
