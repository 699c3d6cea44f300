"""Capped exponential backoff with jitter, for every retry in signalbus."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Capped exponential delays with jitter: about *min_wait*, doubling, at most *max_wait*.

    Each delay is drawn uniformly from ``[ceiling / 2, ceiling]``, where the
    ceiling doubles on every :meth:`next` call until it reaches *max_wait*.
    """

    def __init__(self, min_wait: float, max_wait: float) -> None:
        self.min_wait = min_wait
        self.max_wait = max_wait
        self.attempts = 0

    def next(self) -> float:
        """Return the next delay in seconds."""
        ceiling = min(self.max_wait, self.min_wait * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from *min_wait*."""
        self.attempts = 0
