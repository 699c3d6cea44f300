"""The ``flask signalbus`` commands: flushmany, signals, pending."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from signalbus.rabbitmq import ConnectionFailed
from tests.models import BatchSignal, SingleSignal, db, recorder


@pytest.fixture
def invoke(app: Flask):
    runner = app.test_cli_runner()

    def run(*args: str) -> Result:
        return runner.invoke(args=["signalbus", *args])

    return run


def fill(app: Flask, single: int = 3, batch: int = 150) -> None:
    with app.app_context():
        db.session.add_all(SingleSignal(text=f"s{i}") for i in range(single))
        db.session.add_all(BatchSignal(payload=f"b{i}") for i in range(batch))
        db.session.commit()


def pending(app: Flask, model: type) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model))


def test_signals_lists_the_signal_models(invoke) -> None:
    result = invoke("signals")
    assert result.exit_code == 0
    assert result.output.split() == ["BatchSignal", "CompositeSignal", "SingleSignal"]


def test_pending_counts_per_type_and_total(app: Flask, invoke) -> None:
    fill(app)
    result = invoke("pending")
    assert result.exit_code == 0
    assert "BatchSignal: 150" in result.output
    assert "SingleSignal: 3" in result.output
    assert "CompositeSignal: 0" in result.output
    assert result.output.rstrip().endswith("Total pending: 153")


def test_flushmany_sends_everything(app: Flask, invoke) -> None:
    fill(app)
    result = invoke("flushmany")
    assert result.exit_code == 0, result.output
    assert len(recorder.sent) == 153
    assert pending(app, SingleSignal) == pending(app, BatchSignal) == 0


def test_flushmany_sends_only_the_named_signals(app: Flask, invoke) -> None:
    fill(app)
    assert invoke("flushmany", "SingleSignal").exit_code == 0
    assert len(recorder.sent) == 3
    assert pending(app, BatchSignal) == 150


def test_unknown_signal_is_a_usage_error(app: Flask, invoke) -> None:
    fill(app)
    result = invoke("flushmany", "SingleSignal", "NoSuchSignal")
    assert result.exit_code == 2
    assert "Unknown signal NoSuchSignal" in result.output
    assert "Known signals: BatchSignal, CompositeSignal, SingleSignal" in result.output
    assert "Traceback" not in result.output
    assert recorder.sent == []
    assert pending(app, SingleSignal) == 3


def test_failing_send_logs_the_signal_and_exits_1(
    app: Flask, invoke, caplog: pytest.LogCaptureFixture
) -> None:
    fill(app)
    recorder.error = ConnectionError("broker unreachable")
    result = invoke("flushmany")
    assert result.exit_code == 1
    assert "Sending BatchSignal signals failed" in caplog.text
    assert "Sending SingleSignal signals failed" in caplog.text
    assert pending(app, SingleSignal) == 3
    assert pending(app, BatchSignal) == 150


def test_one_failing_signal_does_not_stop_the_others(
    app: Flask, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(app)

    def fail(cls, objs) -> None:
        raise ConnectionError("nack")

    monkeypatch.setattr(BatchSignal, "send_signalbus_messages", classmethod(fail))
    result = invoke("flushmany")
    assert result.exit_code == 1
    assert pending(app, SingleSignal) == 0
    assert pending(app, BatchSignal) == 150


def test_an_outage_ends_flushmany_on_one_line_without_traceback(
    app: Flask, invoke, caplog: pytest.LogCaptureFixture
) -> None:
    fill(app, single=2, batch=3)
    recorder.error = ConnectionFailed("cannot connect to RabbitMQ at amqp://x: refused")
    result = invoke("flushmany")
    assert result.exit_code == 1
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == [
        "Sending stopped at BatchSignal signals, ConnectionFailed: cannot connect to"
        " RabbitMQ at amqp://x: refused; every row is kept."
    ]
    assert not any(record.exc_info for record in caplog.records)
    assert "Traceback" not in result.output + caplog.text
    assert (pending(app, SingleSignal), pending(app, BatchSignal)) == (2, 3)


def test_bad_burst_count_is_reported_without_traceback(
    app: Flask, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchSignal, "signalbus_burst_count", 0)
    result = invoke("flushmany")
    assert result.exit_code == 1
    assert "BatchSignal.signalbus_burst_count must be a positive integer" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_repeat_is_a_usage_error(invoke, value: str) -> None:
    result = invoke("flushmany", "--repeat", value)
    assert result.exit_code == 2
    assert "Invalid value for '-r' / '--repeat'" in result.output


def test_repeat_flushes_until_interrupted_logging_only_rounds_that_sent(
    app: Flask, invoke, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fill(app)
    rounds = 0

    def sleep(seconds: float) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            fill(app, single=1, batch=0)
        elif rounds == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("signalbus.cli.time.sleep", sleep)
    result = invoke("flushmany", "-r", "0.5")
    assert result.exit_code == 0
    assert rounds == 3
    assert len(recorder.sent) == 154
    sent_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sent ")]
    assert sent_lines == ["Sent 153 signals.", "Sent 1 signals."]


@pytest.fixture
def unreachable_app() -> Iterator[Flask]:
    """An app whose database does not answer (nothing listens on port 1)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
    db.init_app(app)
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


def test_database_error_is_one_line_without_password(unreachable_app: Flask) -> None:
    result = unreachable_app.test_cli_runner().invoke(args=["signalbus", "pending"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Database error: OperationalError:")
    assert len(result.output.strip().splitlines()) == 1
    assert "s3cret" not in result.output


def test_database_error_quoting_the_password_is_redacted(
    unreachable_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pending_count(self: object, model: type) -> int:
        driver_error = psycopg.OperationalError('bad option near "s3cret"')
        raise sa.exc.OperationalError("SELECT", {}, driver_error)

    monkeypatch.setattr("signalbus.bus.SignalBus.pending_count", pending_count)
    result = unreachable_app.test_cli_runner().invoke(args=["signalbus", "pending"])
    assert result.exit_code == 1
    assert result.output == 'Error: Database error: OperationalError: bad option near "***"\n'


def test_flushmany_without_database_logs_each_signal_and_exits_1(
    unreachable_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    result = unreachable_app.test_cli_runner().invoke(args=["signalbus", "flushmany"])
    assert result.exit_code == 1
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info is None for r in failures)
    assert "Sending BatchSignal signals failed; its rows are kept: OperationalError" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SIGNALBUS_SWEEP_INTERVAL", "abc", "SIGNALBUS_SWEEP_INTERVAL must be a positive number"),
        ("SIGNALBUS_PROBE_INTERVAL", 0, "SIGNALBUS_PROBE_INTERVAL must be a positive number"),
        ("SIGNALBUS_CHANNEL", "x" * 64, f"SIGNALBUS_CHANNEL {'x' * 64!r} is longer than 63"),
        ("SIGNALBUS_WORKERS", 0, "SIGNALBUS_WORKERS must be a whole number from 1 to 64"),
        ("SIGNALBUS_WORKERS", "many", "SIGNALBUS_WORKERS must be a whole number from 1 to 64"),
    ],
)
def test_listen_rejects_bad_configuration(
    app: Flask, invoke, key: str, value: object, message: str
) -> None:
    app.config[key] = value
    result = invoke("listen")
    assert result.exit_code == 1
    assert result.output.startswith("Error: Bad configuration: ")
    assert message in result.output
    assert "Traceback" not in result.output


def test_config_shows_every_setting_with_its_source_and_no_password(app: Flask, invoke) -> None:
    app.config["SIGNALBUS_RABBITMQ_URL"] = "amqp://user:pa55word@broker:5672/%2F"
    app.config["SIGNALBUS_WORKERS"] = 8
    app.config["SIGNALBUS_EXCHANGE"] = "orders"
    result = invoke("config")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "SIGNALBUS_CHANNEL = 'signalbus'  (default)" in lines
    assert "SIGNALBUS_WORKERS = 8  (app config)" in lines
    assert "SIGNALBUS_RABBITMQ_URL = 'amqp://user:***@broker:5672/%2F'  (app config)" in lines
    assert "SIGNALBUS_EXCHANGE = 'orders'  (app config, not a signalbus setting)" in lines
    assert "pa55word" not in result.output
    assert len(lines) == 8  # the 7 settings of signalbus, and the app's own key
