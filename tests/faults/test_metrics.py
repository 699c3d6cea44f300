"""The listener's metrics and probes, scraped from real listener processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.listener_processes import Database, ListenerProcess
from tests.metrics_checks import get, probe, sample, scrape, served_url
from tests.proxies import FreezableProxy
from tests.waiting import wait_until

PASSWORD = "m3trics-s3cret-pw"


def listening_on(base: str) -> dict[str, float]:
    """``signalbus_listening`` by database."""
    return {
        dict(labels)["database"]: value
        for (name, labels), value in scrape(base).items()
        if name == "signalbus_listening"
    }


def test_metrics_follow_the_rows_sent_and_show_no_password(
    spawn: Callable[..., ListenerProcess], database: Database, database_url: str
) -> None:
    url = make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    listener = spawn("--metrics-port", "0", LISTENER_DATABASE_URL=url)
    base = served_url(listener)
    listener.wait_ready()
    database.insert("tick", 1, 500)
    wait_until(lambda: len(database.sent()) == 500, what="500 rows sent")
    samples = scrape(base)
    assert sample(samples, "signalbus_sent_total", signal="Tick") == 500
    assert sample(samples, "signalbus_sent_total", signal="Flaky") == 0
    assert sample(samples, "signalbus_delivery_seconds_count", signal="Tick") == 500
    assert 0 < (sample(samples, "signalbus_delivery_seconds_sum", signal="Tick") or 0) < 500 * 30
    assert (sample(samples, "signalbus_flush_seconds_count", signal="Tick") or 0) >= 5
    assert sample(samples, "signalbus_delivery_seconds_count", signal="Flaky") is None
    assert sample(samples, "signalbus_send_failures_total", signal="Tick", kind="row") == 0
    wait_until(
        lambda: sample(scrape(base), "signalbus_pending_rows", signal="Tick") == 0,
        timeout=15,
        what="pending Tick rows measured at 0",
    )
    samples = scrape(base)
    assert sample(samples, "signalbus_oldest_pending_seconds", signal="Tick") == 0
    assert sample(samples, "signalbus_oldest_pending_seconds", signal="Flaky") is None
    [(database_label, up)] = listening_on(base).items()
    assert up == 1 and database.name in database_label
    for path in ("metrics", "", "status.json", "healthz", "readyz"):
        status, body = get(base + path)
        assert status == 200 and PASSWORD not in body, (path, body)
    assert PASSWORD not in listener.output


def test_row_failures_are_counted_and_readiness_follows_them(
    spawn: Callable[..., ListenerProcess], database: Database, env: dict[str, str]
) -> None:
    fail_file = Path(env["LISTENER_FAIL_FILE"])
    fail_file.touch()
    listener = spawn("--metrics-port", "0", SIGNALBUS_READY_FAILING_SECONDS="1")
    base = served_url(listener)
    listener.wait_ready()
    assert probe(base, "readyz") == (200, {"status": "ready"})
    database.insert("flaky", 1, 3)

    def row_failures() -> float:
        return (
            sample(scrape(base), "signalbus_send_failures_total", signal="Flaky", kind="row") or 0
        )

    wait_until(lambda: row_failures() >= 1, what="a failure of kind row")
    wait_until(lambda: probe(base, "readyz")[0] == 503, what="/readyz failing")
    _, body = probe(base, "readyz")
    assert body["status"] == "not ready"
    assert "sending Flaky signals has failed for" in body["reasons"][0]
    assert "the broker refused a Flaky message" in body["reasons"][0]
    wait_until(lambda: sample(scrape(base), "signalbus_pending_rows", signal="Flaky") == 3)
    assert sample(scrape(base), "signalbus_send_failures_total", signal="Flaky", kind="outage") == 0
    # Every row fails: the failure is the model's, no row's, and none is quarantined.
    assert sample(scrape(base), "signalbus_quarantined_rows", signal="Flaky") == 0
    assert probe(base, "healthz")[0] == 200
    fail_file.unlink()
    wait_until(lambda: probe(base, "readyz")[0] == 200, timeout=60, what="/readyz ready again")
    wait_until(lambda: sorted(database.sent("Flaky")) == [1, 2, 3], what="the rows, sent")
    wait_until(
        lambda: sample(scrape(base), "signalbus_pending_rows", signal="Flaky") == 0,
        timeout=15,
        what="pending Flaky rows measured at 0",
    )


def test_readiness_fails_while_the_database_is_out(
    spawn: Callable[..., ListenerProcess],
    database: Database,
    database_url: str,
    proxy: FreezableProxy,
) -> None:
    listener = spawn("--metrics-port", "0", LISTENER_DATABASE_URL=proxy.url(database_url))
    base = served_url(listener)
    assert probe(base, "healthz")[0] == 200
    listener.wait_ready()
    wait_until(lambda: probe(base, "readyz")[0] == 200, what="/readyz once listening")
    proxy.go_down()
    wait_until(lambda: probe(base, "readyz")[0] == 503, what="/readyz failing in the outage")
    status, body = probe(base, "readyz")
    assert status == 503 and body["reasons"][0].startswith("not listening on "), body
    assert list(listening_on(base).values()) == [0]
    assert probe(base, "healthz")[0] == 200  # the main loop turns all the same
    proxy.come_up()
    wait_until(lambda: probe(base, "readyz")[0] == 200, what="/readyz once back")
    database.insert("tick", 1)
    wait_until(
        lambda: database.sent() == [1],
        what=lambda: f"a row after the outage; the listener said:\n{listener.output}",
    )


def test_a_port_that_is_taken_is_a_one_line_error(
    spawn: Callable[..., ListenerProcess], flask_app: object
) -> None:
    first = spawn("--metrics-port", "0")
    port = served_url(first).rsplit(":", 1)[1].strip("/")
    second = spawn("--metrics-port", port)
    assert second.wait(timeout=30) == 1
    assert f"Error: Cannot serve metrics on 127.0.0.1:{port}: Address already in use" in (
        second.output
    )
    assert "Traceback" not in second.output
