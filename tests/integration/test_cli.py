"""The ``flask signalbus`` commands: flushmany, signals, pending, config, status."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from signalbus.backlog import PENDING_COUNT_LIMIT
from signalbus.rabbitmq import ConnectionFailed
from signalbus.triggers import drop_trigger
from tests.models import BatchSignal, SingleSignal, db, recorder
from tests.trigger_checks import install_classic_function


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
    monkeypatch.setattr(BatchSignal, "send_signalbus_message", classmethod(fail))
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


@pytest.mark.parametrize("command", ["flushmany", "listen"])
@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("signalbus_burst_count", 0, "BatchSignal.signalbus_burst_count must be a positive"),
        ("signalbus_max_attempts", "5", "BatchSignal.signalbus_max_attempts must be a positive"),
        ("signalbus_timestamp_column", "payload", "BatchSignal.signalbus_timestamp_column must"),
    ],
)
def test_bad_model_settings_are_refused_before_anything_is_sent(
    app: Flask,
    invoke,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    attribute: str,
    value: object,
    message: str,
) -> None:
    fill(app)
    monkeypatch.setattr(BatchSignal, attribute, value, raising=False)
    result = invoke(command)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert pending(app, SingleSignal) == 3  # nothing sent


@pytest.mark.parametrize("command", ["flushmany", "listen"])
def test_bad_max_attempts_setting_is_refused_before_anything_is_sent(
    app: Flask, invoke, command: str
) -> None:
    fill(app)
    app.config["SIGNALBUS_MAX_ATTEMPTS"] = 0
    result = invoke(command)
    assert result.exit_code == 1
    assert "SIGNALBUS_MAX_ATTEMPTS must be a positive whole number, not 0" in result.output
    assert pending(app, SingleSignal) == 3


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
    # Per model only what it sent: an idle round of a repeating flushmany is not news.
    assert [re.sub(r" in [\d.]+ s", "", line) for line in sent_lines] == [
        "Sent 150 BatchSignal signals.",
        "Sent 3 SingleSignal signals.",
        "Sent 153 signals.",
        "Sent 1 SingleSignal signals.",
        "Sent 1 signals.",
    ]


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
        ("SIGNALBUS_METRICS_PORT", "http", "SIGNALBUS_METRICS_PORT must be a port number"),
        ("SIGNALBUS_METRICS_PORT", 70000, "SIGNALBUS_METRICS_PORT must be a port number"),
        ("SIGNALBUS_METRICS_HOST", 8, "SIGNALBUS_METRICS_HOST must be a host name or address"),
        ("SIGNALBUS_READY_FAILING_SECONDS", -1, "SIGNALBUS_READY_FAILING_SECONDS must be a"),
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
    assert "SIGNALBUS_METRICS_PORT = None  (default)" in lines
    assert len(lines) == 12  # the 11 settings of signalbus, and the app's own key


def fill_aged(app: Flask, batch_age: int = 90, single: int = 3) -> None:
    """Two BatchSignal rows, the first by id recorded *batch_age* seconds ago (the other
    an hour ago: not the oldest by primary key), and *single* SingleSignal rows."""
    with app.app_context():
        db.session.execute(
            sa.text(
                "INSERT INTO batch_signal (id, payload, inserted_at) VALUES"
                " (2, 'x', now() - make_interval(secs => :age)),"
                " (5, 'y', now() - interval '1 hour')"
            ),
            {"age": batch_age},
        )
        db.session.commit()
    fill(app, single=single, batch=0)


def run_sql(app: Flask, statement: str) -> None:
    with app.app_context(), db.engine.begin() as connection:
        connection.exec_driver_sql(statement)


@pytest.fixture
def installed(invoke) -> None:
    """Every signal table has its trigger."""
    assert invoke("triggers", "--install").exit_code == 0


def status_json(result: Result) -> dict[str, dict[str, object]]:
    """The signals of ``status --json``'s document, by name."""
    document = json.loads(result.output)
    assert list(document) == ["signals"]
    return {signal.pop("name"): signal for signal in document["signals"]}


@pytest.mark.usefixtures("installed")
def test_status_shows_pending_oldest_age_and_trigger_then_the_total(app: Flask, invoke) -> None:
    fill_aged(app)
    result = invoke("status")
    assert result.exit_code == 0, result.output
    batch, composite, single, total = result.output.splitlines()
    match = re.fullmatch(r"BatchSignal: 2 pending, oldest (\d+\.\d) s, trigger installed", batch)
    assert match and 90 <= float(match[1]) < 150
    assert composite == "CompositeSignal: 0 pending, oldest -, trigger installed"
    assert single == "SingleSignal: 3 pending, oldest -, trigger installed"
    assert total == "Total pending: 5"


@pytest.mark.usefixtures("installed")
def test_status_json_is_one_document_with_a_key_per_fact(app: Flask, invoke) -> None:
    fill_aged(app)
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    signals = status_json(result)
    assert list(signals) == ["BatchSignal", "CompositeSignal", "SingleSignal"]
    age = signals["BatchSignal"].pop("oldest_age_seconds")
    assert isinstance(age, float) and 90 <= age < 150
    table_and_trigger = {"table_exists": True, "trigger": "installed", "trigger_ok": True}
    counts = {"pending": 2, "pending_capped": False, "quarantined": 0}
    assert signals["BatchSignal"] == {"table": "batch_signal", **counts, **table_and_trigger}
    counts = {"pending": 3, "pending_capped": False, "oldest_age_seconds": None, "quarantined": 0}
    assert signals["SingleSignal"] == {"table": "single_signal", **counts, **table_and_trigger}
    assert signals["CompositeSignal"]["pending"] == 0


def test_status_shows_only_the_named_signals(app: Flask, invoke) -> None:
    fill_aged(app)
    result = invoke("status", "SingleSignal")
    assert result.exit_code == 1  # no trigger installed
    assert result.output.splitlines() == [
        "SingleSignal: 3 pending, oldest -, trigger missing",
        "Total pending: 3",
    ]
    assert list(status_json(invoke("status", "SingleSignal", "--json"))) == ["SingleSignal"]


def test_status_counts_up_to_the_limit(app: Flask, invoke) -> None:
    run_sql(
        app,
        "INSERT INTO single_signal (id, message_text)"
        f" SELECT g, 't' FROM generate_series(1, {PENDING_COUNT_LIMIT + 5}) g",
    )
    fill(app, single=0, batch=2)
    result = invoke("status")
    assert f"SingleSignal: {PENDING_COUNT_LIMIT}+ pending, oldest -," in result.output
    assert result.output.splitlines()[-1] == f"Total pending: {PENDING_COUNT_LIMIT + 2}+"
    signals = status_json(invoke("status", "--json"))
    assert signals["SingleSignal"]["pending"] == PENDING_COUNT_LIMIT
    assert signals["SingleSignal"]["pending_capped"] is True


@pytest.mark.usefixtures("installed")
def test_status_exits_1_on_a_missing_trigger_and_still_prints(app: Flask, invoke) -> None:
    fill_aged(app)
    with app.app_context(), db.engine.begin() as connection:
        drop_trigger(connection, "single_signal")
    result = invoke("status")
    assert result.exit_code == 1
    assert "SingleSignal: 3 pending, oldest -, trigger missing" in result.output.splitlines()
    assert "BatchSignal: 2 pending" in result.output
    json_result = invoke("status", "--json")
    assert json_result.exit_code == 1
    signals = status_json(json_result)
    assert signals["SingleSignal"]["trigger"] == "trigger missing"
    assert signals["SingleSignal"]["trigger_ok"] is False
    assert signals["BatchSignal"]["trigger_ok"] is True


@pytest.mark.usefixtures("installed")
def test_status_exits_1_on_an_outdated_function(app: Flask, invoke) -> None:
    with app.app_context():
        install_classic_function(db.engine)
    result = invoke("status", "BatchSignal")
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        "BatchSignal: 0 pending, oldest -, function outdated (hint: flask db upgrade, or --install)"
    )


@pytest.mark.usefixtures("installed")
def test_status_exits_1_on_a_missing_table_and_measures_the_others(app: Flask, invoke) -> None:
    fill_aged(app)
    run_sql(app, "DROP TABLE composite_signal")
    result = invoke("status")
    assert result.exit_code == 1
    assert result.output.splitlines()[1:] == [
        "CompositeSignal: - pending, oldest -, table missing (hint: flask db upgrade)",
        "SingleSignal: 3 pending, oldest -, trigger installed",
        "Total pending: 5 (not counting 1 missing table)",
    ]
    json_result = invoke("status", "--json")
    assert json_result.exit_code == 1
    assert status_json(json_result)["CompositeSignal"] == {
        "table": "composite_signal",
        "table_exists": False,
        "pending": None,
        "pending_capped": None,
        "oldest_age_seconds": None,
        "trigger": "table missing (hint: flask db upgrade)",
        "trigger_ok": False,
        "quarantined": 0,
    }


@pytest.mark.parametrize("as_json", [(), ("--json",)])
def test_status_of_an_unknown_signal_is_a_usage_error(invoke, as_json: tuple[str, ...]) -> None:
    result = invoke("status", "BatchSignal", "NoSuchSignal", *as_json)
    assert result.exit_code == 2
    assert "Unknown signal NoSuchSignal" in result.output
    assert "BatchSignal:" not in result.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (("SIGNALBUS_CHANNEL", "x" * 64), "SIGNALBUS_CHANNEL 'xxx"),
        (("signalbus_timestamp_column", "payload"), "BatchSignal.signalbus_timestamp_column"),
    ],
)
def test_status_reports_bad_configuration_on_one_line(
    app: Flask, invoke, monkeypatch: pytest.MonkeyPatch, setting: tuple[str, str], message: str
) -> None:
    key, value = setting
    run_sql(app, "DROP TABLE batch_signal")  # reported even where the table is missing
    if key.startswith("SIGNALBUS_"):
        app.config[key] = value
    else:
        monkeypatch.setattr(BatchSignal, key, value)
    result = invoke("status", "--json")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Bad configuration: {message}")
    assert len(result.output.splitlines()) == 1
