"""When a model is due for a flush: on request, at its sweep, or at its retry.

A :class:`FlushSchedule` is the pure state machine behind each model the
listener serves; the thread that waits on it owns it. It knows nothing of
threads or databases: it is told of requests, successes and failures, and
reads the time from a clock it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .backoff import Backoff

__all__ = ["FlushSchedule"]


class FlushSchedule:
    """The flush times of one model.

    While the model's flushes succeed, a flush is due on every request and
    *sweep_interval* seconds after the last flush. Once one fails, the next is
    due after a delay of *backoff*; until then only a catch-up request (the
    database was reconnected) makes a flush due: other requests are answered
    by the retry itself.
    """

    def __init__(
        self,
        sweep_interval: float,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sweep_interval = sweep_interval
        self._backoff = backoff
        self._clock = clock
        self._sweep_at = clock() + sweep_interval
        self._retry_at: float | None = None
        self._catch_up = False

    @property
    def failing(self) -> bool:
        """Whether the last flush failed."""
        return self._retry_at is not None

    @property
    def failures(self) -> int:
        """How many flushes in a row have failed."""
        return self._backoff.attempts

    def timeout(self) -> float:
        """Seconds from now until a flush is due without any request."""
        due = self._sweep_at if self._retry_at is None else self._retry_at
        return max(0.0, due - self._clock())

    def request_catch_up(self) -> None:
        """Make the next :meth:`is_due` true, even while backing off."""
        self._catch_up = True

    def is_due(self) -> bool:
        """Whether a flush is due now; ask after each request or :meth:`timeout`."""
        catch_up, self._catch_up = self._catch_up, False
        return catch_up or self._retry_at is None or self._clock() >= self._retry_at

    def succeeded(self) -> None:
        """Record a flush that worked: back to sweeping, backoff reset."""
        self._retry_at = None
        self._backoff.reset()
        self._sweep_at = self._clock() + self.sweep_interval

    def failed(self) -> float:
        """Record a flush that failed; return the seconds until it is retried."""
        delay = self._backoff.next()
        self._retry_at = self._clock() + delay
        return delay
