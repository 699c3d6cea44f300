"""The extension's configuration: its keys, their defaults, and their checks.

Every key has the ``SIGNALBUS_`` prefix; ``init_app`` sets the defaults that
the app config lacks.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_CONFIG",
    "DEFAULT_PROBE_INTERVAL",
    "DEFAULT_RABBITMQ_TIMEOUT",
    "DEFAULT_SWEEP_INTERVAL",
    "MAX_CHANNEL_BYTES",
    "MAX_SECONDS",
    "check_channel",
    "check_seconds",
]

DEFAULT_CHANNEL = "signalbus"
DEFAULT_SWEEP_INTERVAL = 60.0
DEFAULT_PROBE_INTERVAL = 60.0
DEFAULT_RABBITMQ_TIMEOUT = 30.0

DEFAULT_CONFIG: dict[str, Any] = {
    "SIGNALBUS_CHANNEL": DEFAULT_CHANNEL,
    "SIGNALBUS_SWEEP_INTERVAL": DEFAULT_SWEEP_INTERVAL,
    "SIGNALBUS_PROBE_INTERVAL": DEFAULT_PROBE_INTERVAL,
    "SIGNALBUS_RABBITMQ_URL": None,
    "SIGNALBUS_RABBITMQ_TIMEOUT": DEFAULT_RABBITMQ_TIMEOUT,
}

#: PostgreSQL truncates longer identifiers, channel names included.
MAX_CHANNEL_BYTES = 63

#: The longest interval or timeout taken, in seconds: a week.
MAX_SECONDS = 7 * 24 * 3600.0


def check_channel(channel: Any, name: str = "The channel") -> str:
    """Return *channel*, or raise :class:`ValueError` if PostgreSQL would not take it.

    A bad channel must fail early: in a trigger it would make every ``INSERT``
    into the table fail, and a listener would silently listen on a truncated name.
    *name* is how the message calls it (e.g. the config key).
    """
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"{name} must be a non-empty string, not {channel!r}")
    if len(channel.encode()) > MAX_CHANNEL_BYTES:
        raise ValueError(f"{name} {channel!r} is longer than {MAX_CHANNEL_BYTES} bytes")
    return channel


def check_seconds(name: str, value: Any) -> float:
    """Return *value* as a number of seconds up to :data:`MAX_SECONDS`, or raise ValueError.

    Numeric strings are taken too: config often comes from the environment.
    """
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) else math.nan
    except (ValueError, OverflowError):
        seconds = math.nan
    if isinstance(value, bool) or not (0 < seconds <= MAX_SECONDS):
        raise ValueError(
            f"{name} must be a positive number of seconds, at most {MAX_SECONDS:g}, not {value!r}"
        )
    return seconds
