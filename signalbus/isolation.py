"""Isolating the rows of a failed burst that fail on their own, so that the others go out.

When a burst's send raises an error that is not an outage
(:class:`~signalbus.errors.OutageError`, or any database error), the burst is
rolled back and :class:`Isolation` sends it again in halves, and halves of
the halves that fail, down to single rows. The rows of each part are deleted,
sent and committed together, as in a burst; a part that fails is rolled back.

The parts of each level are tried before the halves of those that failed
(breadth first). A single row that fails is a suspect. Its failure counts
only with evidence that the failure is the row's and not the model's: some
other row of the isolated burst went out. Without it (every part failed, or
more parts failed before any went out than :data:`PROBES_BEFORE_EVIDENCE`
plus the levels of halving a burst of its size can have), or with more
suspects than one in :data:`MOST_SUSPECTS` rows and more than 3 (the send
started failing for every row midway), the original error propagates and the model backs
off, nothing counted. A burst
of one row is isolated together with the row right behind it, if there is
one, for that evidence.

Each suspect is then tried alone until it goes out or has failed
``max_attempts`` times in all (its count survives restarts: it is kept in
the quarantine table, see :mod:`signalbus.quarantine`); the last failure
moves it to quarantine in the transaction that deletes it from its table.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .burst import Burst, BurstStatement
from .errors import OutageError, one_line
from .model import SignalModel, signal_table
from .quarantine import forget_failure, forget_stale_failures, has_quarantine, record_failure

__all__ = ["MOST_SUSPECTS", "PROBES_BEFORE_EVIDENCE", "Isolation", "IsolationResult", "is_outage"]

logger = logging.getLogger(__name__)

#: More suspects than one in this many rows (and more than 3), and the failure is the
#: model's: a send that started failing for every row after some went out.
MOST_SUSPECTS = 10

#: Failed parts allowed before any row went out, on top of one per level of halving
#: (10 for 1000 rows); one more, and the failure is the model's.
PROBES_BEFORE_EVIDENCE = 8

Key = tuple[Any, ...]


def is_outage(error: BaseException) -> bool:
    """Whether *error* says a service is unavailable rather than that some rows are bad."""
    return isinstance(error, OutageError | DBAPIError)


@dataclass
class IsolationResult:
    """What an isolation did."""

    #: Rows sent.
    sent: int = 0
    #: The keys of the rows moved to quarantine.
    quarantined: list[Key] = field(default_factory=list)


class Isolation:
    """Isolates the bad rows of one failed burst of *model* on *connection*.

    *send* sends a burst and commits it, or rolls it back and raises;
    *describe* turns an error into the one line the quarantine keeps.
    """

    def __init__(
        self,
        model: SignalModel,
        statement: BurstStatement,
        connection: Connection,
        send: Callable[[Burst], None],
        max_attempts: int,
        describe: Callable[[BaseException], str] = one_line,
    ) -> None:
        self.model = model
        self._statement = statement
        self._connection = connection
        self._send = send
        self._max_attempts = max_attempts
        self._describe = describe
        self._result = IsolationResult()

    def run(self, rows: Sequence[Any], error: Exception) -> IsolationResult:
        """Isolate the rows of the failed burst *rows*, whose send raised *error*.

        Raises *error* when the failure is the model's, or when the database
        has no quarantine table (the rows then stay, as before isolation).
        """
        with self._connection.begin():
            if not has_quarantine(self._connection):
                raise error
            forget_stale_failures(self._connection, self.model)
        keys = [self._statement.key_of(row) for row in rows]
        if len(keys) == 1:
            keys += self._key_behind(keys[0])
        suspects = self._split(keys, error)
        if not self._result.sent or len(suspects) > max(3, len(keys) // MOST_SUSPECTS):
            raise error
        for key, failure in suspects:
            self._try_alone(key, failure)
        return self._result

    def _split(self, keys: list[Key], error: Exception) -> list[tuple[Key, Exception]]:
        """Send *keys* in ever smaller parts; return the single rows that failed, and how.

        Breadth first: every part of a level is tried before the halves of those
        that failed, so that a part that goes out (the evidence) comes early,
        wherever the bad rows are.
        """
        suspects: list[tuple[Key, Exception]] = []
        parts = collections.deque(_halves(keys))
        probes, most_probes = 0, PROBES_BEFORE_EVIDENCE + len(keys).bit_length()
        while parts:
            part = parts.popleft()
            failure = self._send_part(part)
            if failure is None:
                continue
            if not self._result.sent:
                probes += 1
                if probes > most_probes:
                    raise error
            if len(part) == 1:
                suspects.append((part[0], failure))
            else:
                parts.extend(_halves(part))
        return suspects

    def _send_part(self, keys: Sequence[Key]) -> Exception | None:
        """Send the rows with *keys* still there; return the send's error, unless an outage."""
        burst = self._statement.fetch_keys(self._connection, keys)
        if not burst.rows:  # another flush has them
            burst.rollback()
            return None
        try:
            self._send(burst)
        except Exception as failure:
            if is_outage(failure):
                raise
            return failure
        self._result.sent += len(burst.rows)
        return None

    def _try_alone(self, key: Key, failure: Exception) -> None:
        """Count the failure of the row *key*, and try it again until it goes or is parked."""
        while True:
            with self._connection.begin():
                attempts = record_failure(
                    self._connection, self.model, key, self._describe(failure), self._max_attempts
                )
            if attempts is None:
                return  # sent by another process meanwhile
            if attempts >= self._max_attempts:
                self._result.quarantined.append(key)
                logger.warning(
                    "Quarantined the %s row %s after %d attempts: %s",
                    self.model.__name__,
                    _describe_key(self.model, key),
                    attempts,
                    self._describe(failure),
                )
                return
            retried = self._send_part([key])
            if retried is None:
                with self._connection.begin():
                    forget_failure(self._connection, self.model, key)
                return
            failure = retried

    def _key_behind(self, key: Key) -> list[Key]:
        """The key of the row right after *key*, if there is one."""
        columns = signal_table(self.model).primary_key.columns
        query = (
            sa.select(*columns)
            .where(sa.tuple_(*columns) > sa.tuple_(*key))
            .order_by(*columns)
            .limit(1)
        )
        with self._connection.begin():
            return [tuple(row) for row in self._connection.execute(query)]


def _halves(keys: list[Key]) -> list[list[Key]]:
    middle = (len(keys) + 1) // 2
    return [part for part in (keys[:middle], keys[middle:]) if part]


def _describe_key(model: SignalModel, key: Key) -> str:
    names = [column.name for column in signal_table(model).primary_key.columns]
    return ", ".join(f"{name}={value!r}" for name, value in zip(names, key, strict=True))
