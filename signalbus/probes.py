"""Liveness and readiness of a listener, decided from its activity.

``/healthz`` (:func:`health`): the main loop turns; it wakes at least every
:data:`~signalbus.listener.TURN_MAX` seconds, so one that has not turned for
:data:`STALL_SECONDS` is stuck. ``/readyz`` (:func:`readiness`): every database
is listened on and no model has been failing for longer than
``SIGNALBUS_READY_FAILING_SECONDS``. Each answer carries a small JSON body
saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .activity import ActivitySnapshot

__all__ = ["STALL_SECONDS", "Probe", "health", "readiness"]

#: Seconds without a turn of the main loop after which the listener counts as stalled.
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class Probe:
    """A probe's answer: *ok* (HTTP 200, else 503) and the JSON *body* saying why."""

    ok: bool
    body: dict[str, Any]


def health(snapshot: ActivitySnapshot) -> Probe:
    """Healthy while the main loop turns."""
    since = round(snapshot.since_turn, 3)
    if snapshot.since_turn > STALL_SECONDS:
        reason = f"the main loop has not turned for {since:g} s"
        return Probe(False, {"status": "stalled", "reasons": [reason]})
    return Probe(True, {"status": "ok", "main_loop_turned_seconds_ago": since})


def readiness(snapshot: ActivitySnapshot, failing_limit: float) -> Probe:
    """Ready when every database is listened on and no model fails for over *failing_limit* s."""
    reasons = [
        f"not listening on {database}" for database, up in snapshot.listening.items() if not up
    ]
    for signal in snapshot.signals:
        if signal.failing_for is not None and signal.failing_for > failing_limit:
            reasons.append(
                f"sending {signal.name} signals has failed for {signal.failing_for:.0f} s:"
                f" {signal.last_error}"
            )
    if reasons:
        return Probe(False, {"status": "not ready", "reasons": reasons})
    return Probe(True, {"status": "ready"})
