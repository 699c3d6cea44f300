"""Benchmark: draining rows with a few bad ones among them, next to draining clean rows.

    python -m bench.poison [--url AMQP_URL] [--rows 100000] [--bad 10] [--rounds 5]
                           [--profile FILE]

Each round drains the same signal table twice with ``flushmany`` of
:mod:`tests.poison_app` (bursts of 1000 rows, each row's message built as the
reference app builds it and published through :class:`signalbus.rabbitmq.Publisher`
to a durable topic exchange and a bound durable queue of the broker at ``--url``,
purged after each drain), in turns first:

* ``clean``: ``--rows`` rows whose payloads are orders, as JSON;
* ``poisoned``: the same, but for ``--bad`` rows spread through them, one in each
  ``--rows``/``--bad`` rows, at a random place, whose payload is not JSON: the send
  cannot build their messages. Their bursts fail, are isolated (sent again in
  halves, down to the bad row, see :mod:`signalbus.isolation`) and the bad rows
  are tried alone until they go to quarantine after ``SIGNALBUS_MAX_ATTEMPTS``.

The table is truncated, filled afresh and ``VACUUM ANALYZE``-d before each drain,
untimed. A drain's rate is the rows it drained (sent or quarantined) per second;
each drain is checked: every good row sent and routed, every bad row in quarantine.
Prints each drain with what it cost (``publish_messages`` calls and messages,
sends that failed, seconds spent isolating), the medians of the rates, the ratio
poisoned/clean of the medians (target >= 0.8) and the median of the rounds' own
ratios (a round's two drains run close in time, on a machine as busy).
``--profile FILE`` writes a cProfile of the poisoned drains.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask

from bench.database import bench_database
from bench.rabbitmq import DEFAULT_URL
from bench.throughput import broker_topology
from refapp.publishing import PUBLISHER_KEY
from signalbus import isolation
from signalbus.config import DEFAULT_CONFIG, MAX_ATTEMPTS
from signalbus.rabbitmq import redact_url
from tests import poison_app
from tests.poison_app import BURST, PoisonSignal, db

NOT_JSON = "{not json"
FILL = sa.text(
    "INSERT INTO poison_signal (id, payload) SELECT g, CASE WHEN g = ANY(:bad) THEN :not_json "
    "ELSE json_build_object('id', g, 'customer', 'customer-' || g, 'total_cents', g * 10, "
    "'created_at', '2024-05-06T07:08:09.123456+00:00', 'shipped_at', NULL)::text END "
    "FROM generate_series(1, :rows) g"
)


def bad_rows(rows: int, bad: int) -> list[int]:
    """*bad* ids, one at a random place in each stretch of ``rows // bad`` rows."""
    chance, step = random.Random(9), rows // bad
    return [stretch * step + chance.randrange(1, step + 1) for stretch in range(bad)]


@dataclass
class Costs:
    """What a drain cost, besides its time."""

    publishes: int = 0
    messages: int = 0
    failed_sends: int = 0
    isolations: int = 0
    isolating: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.publishes:,} publishes of {self.messages:,} messages, "
            f"{self.failed_sends} failed sends, {self.isolations} isolations "
            f"taking {self.isolating:.2f} s"
        )


@contextlib.contextmanager
def counting(app: Flask) -> Iterator[Costs]:
    """Count the drains' publishes, failed sends and isolations while in the block."""
    costs = Costs()
    publisher = app.extensions[PUBLISHER_KEY]
    publish, note_rejected, run = (
        publisher.publish_messages,
        poison_app.note_rejected,
        isolation.Isolation.run,
    )

    def counted_publish(messages: Sequence[Any]) -> None:
        costs.publishes += 1
        costs.messages += len(messages)
        publish(messages)

    def counted_rejection(model: Any, rows: Sequence[Any]) -> None:
        costs.failed_sends += 1
        note_rejected(model, rows)

    def timed_run(self: isolation.Isolation, rows: Sequence[Any], error: Exception) -> Any:
        started = time.perf_counter()
        try:
            return run(self, rows, error)
        finally:
            costs.isolations += 1
            costs.isolating += time.perf_counter() - started

    publisher.publish_messages = counted_publish
    poison_app.note_rejected = counted_rejection
    isolation.Isolation.run = timed_run  # type: ignore[method-assign]
    try:
        yield costs
    finally:
        del publisher.publish_messages
        poison_app.note_rejected = note_rejected
        isolation.Isolation.run = run  # type: ignore[method-assign]


class Drains:
    """Fills the table and drains it with ``flushmany``, clean or poisoned."""

    def __init__(self, app: Flask, rows: int, bad: int, purge: Callable[[], int]) -> None:
        self.app = app
        self.rows = rows
        self.bad = bad_rows(rows, bad) if bad else []
        self.purge = purge
        self.profile: cProfile.Profile | None = None

    def fill(self, bad: list[int]) -> None:
        with db.engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE poison_signal, signalbus_quarantine"))
            connection.execute(FILL, {"rows": self.rows, "bad": bad, "not_json": NOT_JSON})
        with db.engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            autocommit.execute(sa.text("VACUUM ANALYZE poison_signal"))

    def drain(self, poisoned: bool) -> tuple[float, Costs]:
        """Fill the table (with the bad rows, if *poisoned*), drain it; return the rows
        drained per second, and what it cost."""
        bad = self.bad if poisoned else []
        profile = self.profile if poisoned else None
        with self.app.app_context():
            self.fill(bad)
            with counting(self.app) as costs:
                if profile is not None:
                    profile.enable()
                started = time.perf_counter()
                sent = db.signalbus.flushmany([PoisonSignal])
                elapsed = time.perf_counter() - started
                if profile is not None:
                    profile.disable()
            self.check(sent, bad)
        return self.rows / elapsed, costs

    def check(self, sent: int, bad: list[int]) -> None:
        """Every good row was sent and routed, every bad row is in quarantine, none left."""
        assert sent == self.rows - len(bad), f"sent {sent} of {self.rows - len(bad)} rows"
        routed = self.purge()
        assert routed == sent, f"{routed} of {sent} messages routed"
        with db.engine.connect() as connection:
            left = connection.scalar(sa.text("SELECT count(*) FROM poison_signal"))
            quarantined = connection.execute(
                sa.text("SELECT row_key, attempts FROM signalbus_quarantine ORDER BY id")
            ).all()
        assert left == 0, f"{left} rows left"
        assert sorted(key["id"] for key, _ in quarantined) == bad, quarantined
        assert all(attempts == DEFAULT_CONFIG[MAX_ATTEMPTS] for _, attempts in quarantined)


def run(amqp_url: str, rows: int, bad: int, rounds: int, profile_file: str | None) -> None:
    # The quarantine's warnings, one a bad row: the drains are checked instead.
    logging.getLogger("signalbus.listener").setLevel(logging.ERROR)
    rates: dict[str, list[float]] = {"clean": [], "poisoned": []}
    costs: dict[str, list[Costs]] = {"clean": [], "poisoned": []}
    database = f"signalbus_bench_poison_{os.getpid()}"
    keys = [PoisonSignal.routing_key]
    with bench_database(database) as database_url, broker_topology(amqp_url, keys) as topology:
        exchange, purge = topology
        app = poison_app.create_app(
            database_url, {"SIGNALBUS_RABBITMQ_URL": amqp_url, "SIGNALBUS_EXCHANGE": exchange}
        )
        poison_app.create_schema(app)
        drains = Drains(app, rows, bad, purge)
        print(f"broker {redact_url(amqp_url)}: {rounds} rounds x {rows:,} rows, bursts of {BURST}")
        print(f"bad rows of the poisoned drains: {drains.bad}")
        try:
            drains.drain(poisoned=True)  # warm up: connections, caches
            if profile_file:
                drains.profile = cProfile.Profile()
            for number in range(rounds):
                order = ("clean", "poisoned") if number % 2 == 0 else ("poisoned", "clean")
                for name in order:
                    rate, cost = drains.drain(poisoned=name == "poisoned")
                    rates[name].append(rate)
                    costs[name].append(cost)
                    print(f"round {number + 1}: {name:8} {rate:8,.0f} rows/s  ({cost})")
        finally:
            with app.app_context():
                app.extensions[PUBLISHER_KEY].close()
                db.engine.dispose()
    report(rates, costs)
    if drains.profile is not None and profile_file:
        drains.profile.dump_stats(profile_file)
        print(f"cProfile of the poisoned drains: {profile_file}")


def report(rates: dict[str, list[float]], costs: dict[str, list[Costs]]) -> None:
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, median in medians.items():
        publishes = statistics.median(cost.publishes for cost in costs[name])
        isolating = statistics.median(cost.isolating for cost in costs[name])
        print(
            f"median {name:8} {median:8,.0f} rows/s  "
            f"({publishes:,.0f} publishes, {isolating:.2f} s isolating)"
        )
    ratio = medians["poisoned"] / medians["clean"]
    print(f"ratio poisoned/clean {ratio:.3f}  (target >= 0.8)")
    pairs = zip(rates["poisoned"], rates["clean"], strict=True)
    paired = statistics.median(poisoned / clean for poisoned, clean in pairs)
    print(f"median of the rounds' ratios poisoned/clean {paired:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SIGNALBUS_TEST_RABBITMQ_URL", DEFAULT_URL))
    parser.add_argument("--rows", type=int, default=100_000, help="rows per drain")
    parser.add_argument("--bad", type=int, default=10, help="bad rows in the poisoned drain")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both drains")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the poisoned")
    args = parser.parse_args(argv)
    if args.bad < 1 or args.rows // args.bad < 2 or args.rounds < 1:
        parser.error("--bad and --rounds must be at least 1, --rows at least twice --bad")
    run(args.url, args.rows, args.bad, args.rounds, args.profile)


if __name__ == "__main__":
    main()
