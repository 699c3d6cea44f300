"""The status page in a real headless Chromium, as a person watching it would see it.

The page is served by a real listener process, ``flask --app refapp signalbus
listen --metrics-port 0``, whose database URL has a password, sending real
rows to the test broker through an exchange of the test's own. The exchange
is missing at first, so the rows inserted stay pending and their signal fails
where everyone can see it; once it is declared they go out, and the page,
never reloaded, follows. Chromium and chromedriver must be installed (Debian's
``chromium`` and ``chromium-driver``, as ``.ci/run`` does): without them the
test fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from flask_migrate import upgrade
from pika.adapters.blocking_connection import BlockingChannel
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy.engine import make_url

from refapp import create_app
from refapp.models import db
from signalbus.conninfo import libpq_conninfo
from tests.metrics_checks import served_url
from tests.processes import FLASK, OutputProcess

PASSWORD = "st4tus-p4ge-s3cret"
SIGNAL = "OrderPlacedSignal"
ROWS = 200
#: Seconds to wait for what the page shows: a backlog is measured every 5 s, the
#: page refreshed every 2 s, and a failed flush retried after a growing backoff.
TIMEOUT = 60


def browser_paths() -> tuple[str, str]:
    """Chromium's and chromedriver's paths; the test fails if either is missing."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [path for path in (chromium, driver) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: apt-get install chromium chromium-driver "
            "(.ci/run does)",
            pytrace=False,
        )
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless Chromium."""
    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


@pytest.fixture
def shop_url(database_url: str) -> str:
    """A fresh database migrated as the README says (tables and triggers); its URL, with a
    password (the test server trusts any)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def exchange(amqp_channel: BlockingChannel) -> Iterator[str]:
    """The name of an exchange of the test's own, not declared yet; deleted after."""
    name = f"signalbus-status-page-{uuid.uuid4().hex[:8]}"
    yield name
    amqp_channel.exchange_delete(name)


@pytest.fixture
def listener(shop_url: str, amqp_url: str, exchange: str) -> Iterator[OutputProcess]:
    env = {
        **os.environ,
        "DATABASE_URL": shop_url,
        "SIGNALBUS_RABBITMQ_URL": amqp_url,
        "SIGNALBUS_EXCHANGE": exchange,
        "SIGNALBUS_RABBITMQ_TIMEOUT": "5",
    }
    command = [FLASK, "--app", "refapp", "signalbus", "listen", "--metrics-port", "0"]
    process = OutputProcess(command, env)
    yield process
    process.kill()


def place_orders(url: str, count: int) -> None:
    """Record *count* order-placed signals in one transaction."""
    query = (
        "INSERT INTO order_placed_signal (payload) "
        "SELECT json_build_object('n', g) FROM generate_series(1, %s) g"
    )
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as connection:
        connection.execute(query.encode(), (count,))


def shown(browser: WebDriver) -> dict[str, str]:
    """What the page shows now: the signal's cells by class, the databases' states, the error."""
    body = browser.find_element(By.CSS_SELECTOR, f'tbody[data-signal="{SIGNAL}"]')
    cells = body.find_elements(By.CSS_SELECTOR, "tr:first-child td")
    seen = {cell.get_attribute("class").split()[0]: cell.text for cell in cells}
    errors = body.find_elements(By.CSS_SELECTOR, ".last-error")
    seen["last-error"] = errors[0].text if errors else ""
    states = browser.find_elements(By.CSS_SELECTOR, ".database .state")
    seen["databases"] = ", ".join(state.text for state in states)
    return seen


def wait_shown(browser: WebDriver, what: str, **expected: str) -> dict[str, str]:
    """Wait until the page shows *expected* (by :func:`shown`'s keys; a value ending with
    ``...`` is a prefix) and return all it shows then."""

    def matches(value: str, wanted: str) -> bool:
        return value.startswith(wanted[:-3]) if wanted.endswith("...") else value == wanted

    last: list[dict[str, str]] = [{}]

    def check(browser: WebDriver) -> dict[str, str] | None:
        last[0] = seen = shown(browser)
        return seen if all(matches(seen[key], want) for key, want in expected.items()) else None

    wait = WebDriverWait(browser, TIMEOUT, ignored_exceptions=[StaleElementReferenceException])
    try:
        return wait.until(check)
    except TimeoutException:
        pytest.fail(f"the page did not show {what} {expected} in {TIMEOUT} s: it shows {last[0]}")


def queued(channel: BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def test_the_page_follows_a_backlog_its_failure_and_its_sending(
    browser: WebDriver,
    listener: OutputProcess,
    shop_url: str,
    exchange: str,
    amqp_channel: BlockingChannel,
    amqp_queue: str,
) -> None:
    base = served_url(listener)
    listener.wait_for_output("listening")
    browser.get(base)
    assert browser.title == "signalbus: all well"
    wait_shown(browser, "the listener at rest", pending="0", sent="0", databases="listening")
    browser.execute_script("window.neverReloaded = true;")

    place_orders(shop_url, ROWS)
    failing = wait_shown(
        browser, "the backlog, failing", pending=str(ROWS), state="failing for ..."
    )
    assert failing["sent"] == "0" and failing["failures"] != "0 / 0", failing
    assert exchange in failing["last-error"], failing
    assert browser.title == "signalbus: 1 signal failing"

    amqp_channel.exchange_declare(exchange, "topic")
    amqp_channel.queue_bind(amqp_queue, exchange, "#")
    sent = wait_shown(browser, "the backlog, sent", pending="0", sent=str(ROWS), state="sending")
    assert sent["last-error"] == "" and sent["databases"] == "listening"
    assert queued(amqp_channel, amqp_queue) == ROWS
    assert browser.execute_script("return window.neverReloaded === true;")
    assert PASSWORD not in browser.page_source
    assert PASSWORD not in listener.output
