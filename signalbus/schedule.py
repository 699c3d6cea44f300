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

An outage (a database or the broker that cannot be reached, see
:meth:`FlushQueue.outage`) holds the models that depend on it: instead of
each backing off, one of them at a time probes the service every second or
so (they take turns), and the first flush that works (for the broker: that
sent rows) releases them all at once.

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
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Literal, TypeVar

from .backoff import Backoff

__all__ = ["IDLE", "OUTAGE_PROBE_MAX", "SENDING", "SWEEP", "FlushQueue", "Task"]

M = TypeVar("M")

#: Seconds at most between two probes of an unavailable service.
OUTAGE_PROBE_MAX = 1.0


class Task(Enum):
    """What :meth:`FlushQueue.take` hands out besides models."""

    SWEEP = "sweep"
    IDLE = "idle"


#: What :meth:`FlushQueue.take` returns when the sweep is due.
SWEEP: Literal[Task.SWEEP] = Task.SWEEP

#: What :meth:`FlushQueue.take` returns when nothing was due for ``idle_after`` seconds.
IDLE: Literal[Task.IDLE] = Task.IDLE

#: The resource of an outage of the sends (the broker): every model depends on it.
SENDING = "sending"


@dataclass
class _State:
    """Where one model stands."""

    backoff: Backoff
    retry_at: float | None = None
    queued: bool = False
    running: bool = False
    again: bool = False


@dataclass
class _Outage(Generic[M]):
    """A service found unavailable: the models depending on it wait for a probe."""

    backoff: Backoff
    probe_at: float
    #: The model being flushed to probe the service, if any.
    prober: M | None = None


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
        resource_of: Callable[[M], Hashable] = lambda model: None,
    ) -> None:
        """*resource_of* names the service (the database) each model depends on."""
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._resource_of = resource_of
        self._outages: dict[Hashable, _Outage[M]] = {}
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
            elif not (state.queued or self._backs_off(state)):
                state.retry_at = None
                self._enqueue(model, state)

    def later(self, model: M, delay: float) -> None:
        """Ask for a flush of *model* in *delay* seconds, unless one comes sooner.

        Not a failure: its backoff is untouched, and a :meth:`request` meanwhile
        queues it at once.
        """
        with self._changed:
            state = self._states[model]
            if state.running or state.queued:
                return
            retry_at = self._clock() + delay
            if state.retry_at is None or retry_at < state.retry_at:
                state.retry_at = retry_at
                self._changed.notify()  # a waiting worker may have to wake earlier

    def sweep(self, *, catch_up: bool = False) -> None:
        """Ask for a sweep at once; *catch_up* also cuts every model's backoff short."""
        with self._changed:
            if catch_up:
                for state in self._states.values():
                    state.retry_at = None
            self._sweep.requested = True
            self._changed.notify()

    def take(self, idle_after: float | None = None) -> M | Task | None:
        """Wait for a due model (or :data:`SWEEP`) and hand it out; ``None`` once closed.

        The model is the caller's until it calls :meth:`done` or :meth:`failed`,
        the sweep until :meth:`swept`. With *idle_after*, returns :data:`IDLE`
        once nothing was due for that many seconds.
        """
        with self._changed:
            idle_at = None if idle_after is None else self._clock() + idle_after
            while not self._closed:
                now = self._clock()
                self._enqueue_retries(now)
                sweep = self._sweep
                if not sweep.running and (sweep.requested or now >= sweep.due_at):
                    sweep.running, sweep.requested = True, False
                    self._pass_on()
                    return SWEEP
                model = self._next_model(now)
                if model is not None:
                    state = self._states[model]
                    state.queued, state.running = False, True
                    self._pass_on()
                    return model
                if idle_at is not None and now >= idle_at:  # only with nothing due: no lost wake-up
                    return IDLE
                timeout = self._timeout(now)
                if idle_at is not None:
                    until_idle = idle_at - now
                    timeout = until_idle if timeout is None else min(timeout, until_idle)
                self._changed.wait(timeout)
            return None

    def others_waiting(self) -> bool:
        """Whether a model waits for a worker: a flush then ends after its burst."""
        with self._changed:
            return any(not self._held(model) for model in self._ready)

    def failures(self, model: M) -> int:
        """How many flushes of *model* in a row have failed."""
        return self._states[model].backoff.attempts

    def done(self, model: M, *, drained: bool, sent: bool = True) -> None:
        """Record a flush of *model* that worked; queue it again unless *drained*.

        It ends the outage of *model*'s database, and the broker's if it *sent*
        rows: a flush that found none never tried the broker.
        """
        with self._changed:
            self._end_probe(model)
            state = self._states[model]
            state.running, state.retry_at = False, None
            state.backoff.reset()
            ended = self._outages.pop(self._resource_of(model), None)
            if sent:
                ended = self._outages.pop(SENDING, None) or ended
            if state.again or not drained:
                state.again = False
                self._enqueue(model, state)
            if ended is not None:
                self._changed.notify_all()  # the models held by that outage may go

    def failed(self, model: M) -> float:
        """Record a flush of *model* that failed; return the seconds until its retry."""
        with self._changed:
            self._end_probe(model)
            state = self._states[model]
            state.running, state.again = False, False
            delay = state.backoff.next()
            state.retry_at = self._clock() + delay
            self._changed.notify()  # a waiting worker may have to wake earlier
            return delay

    def outage(self, model: M, resource: Hashable) -> float:
        """Record a flush of *model* that failed because *resource* is unavailable.

        *resource* is :data:`SENDING` (the broker) or what ``resource_of``
        returns for *model*. The models depending on it are held; *model* is
        queued first, to probe it, unless it was the probe: then it goes to
        the back, so that a model failing for reasons of its own (its missing
        exchange) cannot hold the others for ever. Returns the seconds until
        the next probe.
        """
        with self._changed:
            probed = self._end_probe(model)
            state = self._states[model]
            state.running, state.again = False, False
            outage = self._outages.get(resource)
            if outage is None:
                outage = self._outages[resource] = _Outage(Backoff(0.25, OUTAGE_PROBE_MAX), 0.0)
            delay = outage.backoff.next()
            outage.probe_at = self._clock() + delay
            if not state.queued:
                state.queued = True
                if probed:
                    self._ready.append(model)
                else:
                    self._ready.appendleft(model)
            self._changed.notify_all()
            return delay

    def available(self, resource: Hashable) -> None:
        """End the outage of *resource*: it was found working (e.g. a LISTEN reconnected)."""
        with self._changed:
            if self._outages.pop(resource, None) is not None:
                self._changed.notify_all()

    def sweep_failures(self) -> int:
        """How many sweeps in a row have failed."""
        return self._sweep.backoff.attempts

    def swept(self, *, ok: bool) -> float:
        """Record the end of a sweep; return the seconds until the next one."""
        with self._changed:
            sweep = self._sweep
            sweep.running = False
            if ok:  # every database answered
                sweep.backoff.reset()
                delay = self.sweep_interval
                for resource in [key for key in self._outages if key != SENDING]:
                    del self._outages[resource]
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

    def _pass_on(self) -> None:
        """Wake another waiting worker if the one taking a task leaves models queued.

        Workers are woken one at a time, not all at once: waking every idle
        worker after every flush costs more CPU than the flush of a row.
        """
        if self._ready:
            self._changed.notify()

    def _resources(self, model: M) -> tuple[Hashable, Hashable]:
        """What *model*'s flushes depend on: the broker, and its database."""
        return (SENDING, self._resource_of(model))

    @staticmethod
    def _backs_off(state: _State) -> bool:
        """Whether *state*'s model waits for its retry after a failure."""
        return state.retry_at is not None and state.backoff.attempts > 0

    def _held(self, model: M) -> bool:
        return any(resource in self._outages for resource in self._resources(model))

    def _next_model(self, now: float) -> M | None:
        """Take the first queued model not held by an outage, or else one to probe with."""
        for model in self._ready:
            if not self._held(model):
                self._ready.remove(model)
                return model
        for resource, outage in self._outages.items():
            if outage.prober is not None or now < outage.probe_at:
                continue
            for model in self._ready:
                if self._depends(model, resource):
                    outage.prober = model
                    self._ready.remove(model)
                    return model
        return None

    def _depends(self, model: M, resource: Hashable) -> bool:
        return resource in self._resources(model)

    def _end_probe(self, model: M) -> bool:
        """End the probes *model* ran, telling if it ran any; another flush ends none."""
        probed = False
        for resource in self._resources(model):
            outage = self._outages.get(resource)
            if outage is not None and outage.prober == model:
                outage.prober, probed = None, True
        return probed

    def _enqueue_retries(self, now: float) -> None:
        for model, state in self._states.items():
            if state.retry_at is not None and now >= state.retry_at:
                state.retry_at = None
                self._enqueue(model, state)

    def _timeout(self, now: float) -> float | None:
        """Seconds until a retry or the sweep is due; ``None``: until something changes."""
        due = [state.retry_at for state in self._states.values() if state.retry_at is not None]
        # An outage is probed with a queued model: without one there is nothing to wait for.
        due += [
            outage.probe_at
            for resource, outage in self._outages.items()
            if outage.prober is None
            and any(self._depends(model, resource) for model in self._ready)
        ]
        if not self._sweep.running:
            due.append(self._sweep.due_at)
        return max(0.0, min(due) - now) if due else None
