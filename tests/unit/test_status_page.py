"""The status page's HTML, rendered from documents made up here or from a real Activity."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest

from signalbus.activity import Activity
from signalbus.backlog import Backlog
from signalbus.status_page import (
    DatabaseEntry,
    SignalEntry,
    StatusDocument,
    human_duration,
    render_main,
    render_page,
    status_document,
)
from tests.models import BatchSignal, SingleSignal

ATTACK = "<script>alert('pwned')</script> & \"quoted\""


def signal(**fields: object) -> SignalEntry:
    """A healthy signal's entry, with *fields* changed."""
    entry: SignalEntry = {
        "name": "Tick",
        "pending": 0,
        "pending_capped": False,
        "oldest_age_seconds": None,
        "quarantined": 0,
        "sent": 0,
        "sent_per_second": 0.0,
        "failures": {"outage": 0, "row": 0},
        "failing_seconds": None,
        "last_error": None,
    }
    entry.update(fields)  # type: ignore[typeddict-item]
    return entry


def document(*signals: SignalEntry, databases: list[DatabaseEntry] | None = None) -> StatusDocument:
    return {
        "version": "1.2.3",
        "started_at": "2024-05-01T12:00:00+00:00",
        "uptime_seconds": 192.4,
        "databases": databases or [{"name": "postgresql://app:***@db/shop", "listening": True}],
        "signals": list(signals),
    }


class Texts(HTMLParser):
    """The text of each element with a class, by class name; and the scripts' count."""

    def __init__(self) -> None:
        super().__init__()
        self.by_class: dict[str, list[str]] = {}
        self.scripts = 0
        self._open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        classes = (dict(attrs).get("class") or "").split()
        self._open.append((tag, classes))
        for name in classes:
            self.by_class.setdefault(name, []).append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, classes in self._open:
            for name in classes:
                self.by_class[name][-1] += data


def texts(page: str) -> dict[str, list[str]]:
    parser = Texts()
    parser.feed(page)
    return parser.by_class


def cell(page: str, name: str) -> str:
    """The text of the first signal's *name* cell (``pending``, ``oldest``...)."""
    return texts(page)[name][0]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0, "0.0 s"),
        (-0.3, "0.0 s"),
        (4.24, "4.2 s"),
        (42.9, "42 s"),
        (60, "1 min 0 s"),
        (192.4, "3 min 12 s"),
        (2 * 3600 + 5 * 60 + 59, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_human_durations(seconds: float | None, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_header_shows_version_uptime_and_start() -> None:
    found = texts(render_page(document(signal())))
    assert found["version"] == ["1.2.3"]
    assert found["uptime"] == ["3 min 12 s"]
    assert found["started"] == ["2024-05-01 12:00:00 UTC"]
    assert found["badge"] == ["all well"]


def test_an_error_with_markup_shows_as_text() -> None:
    failing = signal(name=f"Evil{ATTACK}", failing_seconds=63.0, last_error=ATTACK)
    databases: list[DatabaseEntry] = [{"name": f"db{ATTACK}", "listening": False}]
    page = render_page(document(failing, databases=databases))
    assert "<script>alert" not in page
    assert html.escape(ATTACK) in page
    parser = Texts()
    parser.feed(page)
    assert parser.scripts == 1  # the page's own
    found = parser.by_class
    assert found["last-error"] == [ATTACK]
    assert found["name"] == [f"db{ATTACK}", f"Evil{ATTACK}"]
    assert f'data-signal="Evil{html.escape(ATTACK)}"' in page


def test_capped_pending_reads_as_at_least() -> None:
    page = render_page(document(signal(pending=100_000, pending_capped=True)))
    assert cell(page, "pending") == "100000+"
    assert cell(render_page(document(signal(pending=7))), "pending") == "7"


def test_unknown_values_show_as_a_dash() -> None:
    page = render_page(document(signal(pending=None, oldest_age_seconds=None)))
    assert cell(page, "pending") == "-"
    assert cell(page, "oldest") == "-"
    assert texts(page)["state"] == ["listening", "sending"]
    assert "last-error" not in page


def test_a_signal_at_work_shows_its_numbers() -> None:
    busy = signal(
        pending=12, oldest_age_seconds=75.0, sent=1234, sent_per_second=20.56,
        failures={"outage": 2, "row": 1}, quarantined=3,
    )  # fmt: skip
    page = render_page(document(busy))
    names = ("pending", "oldest", "rate", "sent", "failures", "quarantined")
    shown = {name: cell(page, name) for name in names}
    assert shown == {
        "pending": "12",
        "oldest": "1 min 15 s",
        "rate": "20.6",
        "sent": "1234",
        "failures": "2 / 1",
        "quarantined": "3",
    }


def test_a_failing_signal_and_a_deaf_database_stand_out() -> None:
    failing = signal(failing_seconds=63.0, last_error="ConnectionError: refused")
    databases: list[DatabaseEntry] = [{"name": "db", "listening": False}]
    page = render_page(document(failing, signal(name="Fine"), databases=databases))
    found = texts(page)
    assert found["state"] == ["not listening", "failing for 1 min 3 s", "sending"]
    assert found["failing"] and found["last-error"] == ["ConnectionError: refused"]
    assert found["badge"] == ["1 database not listening, 1 signal failing"]
    assert "<title>signalbus: 1 database not listening, 1 signal failing</title>" in page


def test_the_page_refreshes_by_swapping_its_main_for_the_servers() -> None:
    doc = document(signal())
    page = render_page(doc)
    assert page.count("<main") == 1 and render_main(doc) in page
    assert 'http-equiv="refresh"' not in page  # no reloads: the script fetches the page
    script = page[page.index("<script>") : page.index("</script>")]
    assert 'querySelector("main").replaceWith' in script
    assert re.search(r"const seconds = 2;", script)


def test_status_document_of_a_real_activity() -> None:
    clock = iter(range(1000, 2000)).__next__
    activity = Activity([BatchSignal, SingleSignal], ["db ***"], clock=lambda: float(clock()))
    activity.listening("db ***", True)
    activity.burst_sent(SingleSignal, [object(), object()], started=1000.0)
    activity.flush_failed(BatchSignal, "row", ATTACK)
    backlogs = {BatchSignal: Backlog(100_000, 3.5), SingleSignal: Backlog(0, None)}
    doc = status_document(activity.snapshot(), backlogs)
    assert json.loads(json.dumps(doc)) == doc
    by_name = {entry["name"]: entry for entry in doc["signals"]}
    assert by_name["BatchSignal"]["pending_capped"] is True
    assert by_name["BatchSignal"]["last_error"] == ATTACK
    assert by_name["SingleSignal"]["sent"] == 2
    assert doc["databases"] == [{"name": "db ***", "listening": True}]
    page = render_page(doc)
    assert texts(page)["pending"] == ["100000+", "0"]
    assert texts(page)["last-error"] == [ATTACK]
