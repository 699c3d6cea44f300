"""Which model to flush next: the listener's schedule, shared by its workers.

A :class:`FlushQueue` holds the models a listener serves. A model becomes due
when something asks for it (a notification, a sweep that found rows in its
table) or when the backoff after its failed flush is over. Due models wait in
one first-in, first-out queue that the workers take from:

- a model is given to one worker at a time; asked for again meanwhile, it is
  queued again once that worker is done (rows may have come after its last
  burst);
- a worker ends a flush between two bursts when other models wait, and puts
  its model back at the end of the queue: a backlog of one model delays the
  fresh rows of another by about one burst;
- while a model backs off after a failure, requests for it are answered by
  its retry, unless they come with ``catch_up`` (the database was reconnected).

Every *sweep_interval* seconds, and when asked to (:meth:`FlushQueue.sweep`),
:meth:`FlushQueue.take` hands out :data:`SWEEP` instead of a model: the worker
then asks for the models whose tables have rows.

It knows nothing of databases or threads but its lock; the time comes from
the clock it is given.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Literal, TypeVar

from .backoff import Backoff

__all__ = ["SWEEP", "FlushQueue", "Sweep"]

M = TypeVar("M")


class Sweep(Enum):
    """The type of :data:`SWEEP`."""

    SWEEP = "sweep"


#: What :meth:`FlushQueue.take` returns when the sweep is due.
SWEEP: Literal[Sweep.SWEEP] = Sweep.SWEEP


@dataclass
class _State:
    """Where one model stands."""

    backoff: Backoff
    retry_at: float | None = None
    queued: bool = False
    running: bool = False
    again: bool = False


@dataclass
class _SweepState:
    backoff: Backoff
    due_at: float
    running: bool = False
    requested: bool = False


class FlushQueue(Generic[M]):
    """The due models of a listener, in fair order; safe to share between threads."""

    def __init__(
        self,
        models: Iterable[M],
        sweep_interval: float,
        max_backoff: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._states = {model: _State(Backoff(0.5, max_backoff)) for model in models}
        self._ready: deque[M] = deque()
        self._sweep = _SweepState(Backoff(0.5, max_backoff), clock() + sweep_interval)
        self._changed = threading.Condition()
        self._closed = False

    def request(self, model: M, *, catch_up: bool = False) -> None:
        """Ask for a flush of *model*; *catch_up* also cuts a pending backoff short."""
        with self._changed:
            state = self._states[model]
            if catch_up:
                state.retry_at = None
            if state.running:
                state.again = True
            elif not (state.queued or state.retry_at is not None):
                self._enqueue(model, state)

    def sweep(self, *, catch_up: bool = False) -> None:
        """Ask for a sweep at once; *catch_up* also cuts every model's backoff short."""
        with self._changed:
            if catch_up:
                for state in self._states.values():
                    state.retry_at = None
            self._sweep.requested = True
            self._changed.notify()

    def take(self) -> M | Sweep | None:
        """Wait for a due model (or :data:`SWEEP`) and hand it out; ``None`` once closed.

        The model is the caller's until it calls :meth:`done` or :meth:`failed`,
        the sweep until :meth:`swept`.
        """
        with self._changed:
            while not self._closed:
                now = self._clock()
                self._enqueue_retries(now)
                sweep = self._sweep
                if not sweep.running and (sweep.requested or now >= sweep.due_at):
                    sweep.running, sweep.requested = True, False
                    return SWEEP
                if self._ready:
                    model = self._ready.popleft()
                    state = self._states[model]
                    state.queued, state.running = False, True
                    return model
                self._changed.wait(self._timeout(now))
            return None

    def others_waiting(self) -> bool:
        """Whether a model waits for a worker: a flush then ends after its burst."""
        return bool(self._ready)

    def failures(self, model: M) -> int:
        """How many flushes of *model* in a row have failed."""
        return self._states[model].backoff.attempts

    def done(self, model: M, *, drained: bool) -> None:
        """Record a flush of *model* that worked; queue it again unless *drained*."""
        with self._changed:
            state = self._states[model]
            state.running, state.retry_at = False, None
            state.backoff.reset()
            if state.again or not drained:
                state.again = False
                self._enqueue(model, state)

    def failed(self, model: M) -> float:
        """Record a flush of *model* that failed; return the seconds until its retry."""
        with self._changed:
            state = self._states[model]
            state.running, state.again = False, False
            delay = state.backoff.next()
            state.retry_at = self._clock() + delay
            self._changed.notify_all()  # a waiting worker may have to wake earlier
            return delay

    def sweep_failures(self) -> int:
        """How many sweeps in a row have failed."""
        return self._sweep.backoff.attempts

    def swept(self, *, ok: bool) -> float:
        """Record the end of a sweep; return the seconds until the next one."""
        with self._changed:
            sweep = self._sweep
            sweep.running = False
            if ok:
                sweep.backoff.reset()
                delay = self.sweep_interval
            else:
                delay = min(self.sweep_interval, sweep.backoff.next())
            sweep.due_at = self._clock() + delay
            self._changed.notify_all()
            return delay

    def close(self) -> None:
        """Make every :meth:`take`, waiting or to come, return ``None``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _enqueue(self, model: M, state: _State) -> None:
        state.queued = True
        self._ready.append(model)
        self._changed.notify()

    def _enqueue_retries(self, now: float) -> None:
        for model, state in self._states.items():
            if state.retry_at is not None and now >= state.retry_at:
                state.retry_at = None
                self._enqueue(model, state)

    def _timeout(self, now: float) -> float | None:
        """Seconds until a retry or the sweep is due; ``None``: until something changes."""
        due = [state.retry_at for state in self._states.values() if state.retry_at is not None]
        if not self._sweep.running:
            due.append(self._sweep.due_at)
        return max(0.0, min(due) - now) if due else None
