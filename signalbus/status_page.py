"""The status page: what a person glancing at a listener wants to see.

:func:`status_document` gathers it (also served as ``/status.json``);
:func:`render_page` makes the HTML page: no build step, no external assets.

There is one rendering path, this module's. The page's inline script fetches
the page again every :data:`REFRESH_SECONDS` and swaps its ``<main>`` for the
new one, so the browser never renders from JSON on its own, and without
JavaScript the page still shows everything (as of its loading). Everything
taken from the document is HTML-escaped: a signal's name, a database's
description, an error's text.
"""

from __future__ import annotations

import html
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TypedDict

from .activity import ActivitySnapshot
from .backlog import Backlog
from .model import SignalModel

__all__ = [
    "REFRESH_SECONDS",
    "DatabaseEntry",
    "SignalEntry",
    "StatusDocument",
    "human_duration",
    "render_main",
    "render_page",
    "status_document",
]

#: Seconds between two refreshes of the page.
REFRESH_SECONDS = 2


class DatabaseEntry(TypedDict):
    """A database of the listener: its description (password masked), and its ``LISTEN``."""

    name: str
    listening: bool


class SignalEntry(TypedDict):
    """One signal model's backlog and activity."""

    name: str
    #: ``None`` until measured.
    pending: int | None
    #: Whether *pending* is a lower bound (the count stopped there).
    pending_capped: bool
    oldest_age_seconds: float | None
    #: Rows in quarantine; ``None`` until measured.
    quarantined: int | None
    sent: int
    #: Averaged over the last minute.
    sent_per_second: float
    #: Failed flushes by kind: ``outage`` and ``row``.
    failures: dict[str, int]
    #: ``None`` while its flushes work.
    failing_seconds: float | None
    last_error: str | None


class StatusDocument(TypedDict):
    """What the status page shows, and ``/status.json`` serves."""

    version: str
    #: ISO 8601, to the second.
    started_at: str
    uptime_seconds: float
    databases: list[DatabaseEntry]
    signals: list[SignalEntry]


def status_document(
    snapshot: ActivitySnapshot, backlogs: dict[SignalModel, Backlog]
) -> StatusDocument:
    """The listener's state as JSON-ready data: its databases, uptime, version, and signals."""
    by_name = {model.__name__: backlog for model, backlog in backlogs.items()}
    signals: list[SignalEntry] = []
    for signal in snapshot.signals:
        backlog = by_name.get(signal.name)
        signals.append(
            {
                "name": signal.name,
                "pending": None if backlog is None else backlog.pending,
                "pending_capped": backlog is not None and backlog.capped,
                "oldest_age_seconds": None if backlog is None else backlog.oldest_age,
                "quarantined": None if backlog is None else backlog.quarantined,
                "sent": signal.sent,
                "sent_per_second": signal.rate,
                "failures": signal.failures,
                "failing_seconds": signal.failing_for,
                "last_error": signal.last_error,
            }
        )
    return {
        "version": _version(),
        "started_at": snapshot.started_at.isoformat(timespec="seconds"),
        "uptime_seconds": snapshot.uptime,
        "databases": [{"name": name, "listening": up} for name, up in snapshot.listening.items()],
        "signals": signals,
    }


# ---------------------------------------------------------------------------------------
# Words and numbers


def human_duration(seconds: float | None) -> str:
    """*seconds* as a person reads them: ``"4.2 s"``, ``"3 min 12 s"``, ``"2 h 5 min"``,
    ``"3 d 4 h"``; ``"-"`` for ``None``."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if not minutes:
        return f"{secs} s"
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min {secs} s"
    days, hours = divmod(hours, 24)
    if not days:
        return f"{hours} h {minutes} min"
    return f"{days} d {hours} h"


def describe_pending(signal: SignalEntry) -> str:
    """The pending rows: ``"100000+"`` when the count was capped, ``"-"`` before measured."""
    pending = signal["pending"]
    if pending is None:
        return "-"
    return f"{pending}+" if signal["pending_capped"] else str(pending)


def describe_time(iso: str) -> str:
    """An ISO 8601 time as ``2024-05-01 12:00:00 UTC`` (unchanged if it does not parse)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()


def attention(document: StatusDocument) -> list[str]:
    """What needs a person's attention: databases not listened on, signals failing."""
    deaf = sum(not database["listening"] for database in document["databases"])
    failing = sum(signal["failing_seconds"] is not None for signal in document["signals"])
    problems = []
    if deaf:
        problems.append(f"{deaf} {'database' if deaf == 1 else 'databases'} not listening")
    if failing:
        problems.append(f"{failing} {'signal' if failing == 1 else 'signals'} failing")
    return problems


def page_title(document: StatusDocument) -> str:
    """The page's title: whether all is well, at a glance in a browser's tab."""
    problems = attention(document)
    return "signalbus: " + (", ".join(problems) if problems else "all well")


# ---------------------------------------------------------------------------------------
# HTML


def _text(value: object) -> str:
    """*value* as HTML text (and attribute value): escaped."""
    return html.escape(str(value), quote=True)


def render_page(document: StatusDocument) -> str:
    """The whole status page of *document* (see :func:`status_document`)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(page_title(document))}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{render_main(document)}\n"
        '<footer><span id="refresh">Reload the page to update it.</span> '
        '<a href="/status.json">status.json</a></footer>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def render_main(document: StatusDocument) -> str:
    """The page's ``<main>``: all it shows of *document*, swapped whole on each refresh."""
    return (
        f'<main id="status">{_header(document)}'
        f"{_databases(document['databases'])}{_signals(document['signals'])}</main>"
    )


def _header(document: StatusDocument) -> str:
    problems = attention(document)
    badge = (
        f'<span class="badge bad">{_text(", ".join(problems))}</span>'
        if problems
        else '<span class="badge good">all well</span>'
    )
    started = document["started_at"]
    return (
        f'<header><h1>signalbus <span class="version">{_text(document["version"])}</span> '
        f"{badge}</h1>"
        f'<p>Up <b class="uptime">{_text(human_duration(document["uptime_seconds"]))}</b>, '
        f'started at <time class="started" datetime="{_text(started)}">'
        f"{_text(describe_time(started))}</time></p></header>"
    )


def _databases(databases: list[DatabaseEntry]) -> str:
    items = "".join(_database(database) for database in databases)
    return (
        f'<section><h2>Databases</h2><ul class="databases">'
        f"{items or '<li>None.</li>'}</ul></section>"
    )


def _database(database: DatabaseEntry) -> str:
    state = "listening" if database["listening"] else "not listening"
    css = "good" if database["listening"] else "bad"
    return (
        f'<li class="database" data-database="{_text(database["name"])}">'
        f'<span class="state {css}">{state}</span> '
        f'<span class="name">{_text(database["name"])}</span></li>'
    )


_COLUMNS = (
    ("Signal", ""),
    ("Pending", "num"),
    ("Oldest row", "num"),
    ("Sent/s (1 min)", "num"),
    ("Sent", "num"),
    ("Failures (outage / row)", "num"),
    ("Quarantined", "num"),
    ("State", ""),
)


def _signals(signals: list[SignalEntry]) -> str:
    head = "".join(f'<th class="{css}">{name}</th>' for name, css in _COLUMNS)
    body = "".join(_signal(signal) for signal in signals)
    if not body:
        body = f'<tbody><tr><td colspan="{len(_COLUMNS)}">No signals.</td></tr></tbody>'
    return (
        f'<section><h2>Signals</h2><table class="signals"><thead><tr>{head}</tr></thead>'
        f"{body}</table></section>"
    )


def _signal(signal: SignalEntry) -> str:
    """A signal's ``<tbody>``: its row of numbers, and its last error's row while failing."""
    failing = signal["failing_seconds"] is not None
    failures = signal["failures"]
    cells = (
        ("name", signal["name"]),
        ("pending num", describe_pending(signal)),
        ("oldest num", human_duration(signal["oldest_age_seconds"])),
        ("rate num", f"{signal['sent_per_second']:.1f}"),
        ("sent num", signal["sent"]),
        ("failures num", f"{failures.get('outage', 0)} / {failures.get('row', 0)}"),
        ("quarantined num", "-" if signal["quarantined"] is None else signal["quarantined"]),
        ("state " + ("bad" if failing else "good"), _state(signal)),
    )
    row = "".join(f'<td class="{css}">{_text(value)}</td>' for css, value in cells)
    error = ""
    if failing:
        error = (
            f'<tr class="error"><td colspan="{len(cells)}">Last error: '
            f'<code class="last-error">{_text(signal["last_error"] or "-")}</code></td></tr>'
        )
    css = "signal failing" if failing else "signal"
    name = _text(signal["name"])
    return f'<tbody class="{css}" data-signal="{name}"><tr>{row}</tr>{error}</tbody>'


def _state(signal: SignalEntry) -> str:
    failing = signal["failing_seconds"]
    return "sending" if failing is None else f"failing for {human_duration(failing)}"


def _version() -> str:
    try:
        return version("signalbus")
    except PackageNotFoundError:
        return "unknown"


_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.version { font-weight: normal; color: #666; }
.badge { font-size: .6em; padding: .2em .6em; border-radius: 1em; vertical-align: middle; }
.badge.good { background: #d8f0dc; color: #1b5e20; }
.badge.bad { background: #fbd9d9; color: #b71c1c; }
.databases { list-style: none; padding: 0; margin: 0; }
.databases li { margin: .2em 0; }
.state { font-weight: bold; }
.good { color: #1b5e20; }
.bad { color: #b71c1c; }
.databases .state { display: inline-block; min-width: 8em; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: .35em .8em; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #eee; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody.failing { background: #fff3f3; }
tr.error td { color: #b71c1c; border-bottom-color: #f0c0c0; }
code { white-space: pre-wrap; word-break: break-word; }
footer { margin-top: 1.5em; color: #666; font-size: .9em; }
body.stale main { opacity: .5; }
body.stale #refresh { color: #b71c1c; font-weight: bold; }
"""

# Fetches this page again and swaps its <main> for the fresh one: the markup
# is the server's, rendered by render_main (no second rendering in JavaScript).
_SCRIPT = """
(() => {
  const seconds = REFRESH_SECONDS;
  const note = document.getElementById("refresh");
  const every = " every " + seconds + " s.";
  let updated = new Date();
  note.textContent = "Refreshes" + every;
  async function refresh() {
    try {
      const response = await fetch(location.pathname, {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (!fresh) throw new Error("no status in the answer");
      document.querySelector("main").replaceWith(document.adoptNode(fresh));
      document.title = page.title;
      updated = new Date();
      note.textContent = "Updated at " + updated.toLocaleTimeString() + "; refreshes" + every;
      document.body.classList.remove("stale");
    } catch (error) {
      note.textContent = "Not updated since " + updated.toLocaleTimeString() +
        ": the listener does not answer (" + error.message + "); trying again" + every;
      document.body.classList.add("stale");
    }
    setTimeout(refresh, seconds * 1000);
  }
  setTimeout(refresh, seconds * 1000);
})();
""".replace("REFRESH_SECONDS", str(REFRESH_SECONDS))
