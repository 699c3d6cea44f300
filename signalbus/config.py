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


def check_channel(channel: Any) -> str:
    """Return *channel*, or raise :class:`ValueError` if PostgreSQL would not take it.

    A bad channel must fail early: in a trigger it would make every ``INSERT``
    into the table fail, and a listener would silently listen on a truncated name.
    """
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"The channel must be a non-empty string, not {channel!r}")
    if len(channel.encode()) > MAX_CHANNEL_BYTES:
        raise ValueError(f"The channel {channel!r} is longer than {MAX_CHANNEL_BYTES} bytes")
    return channel


def check_seconds(name: str, value: Any) -> float:
    """Return *value* as a positive number of seconds, or raise :class:`ValueError`.

    Numeric strings are taken too: config often comes from the environment.
    """
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) else math.nan
    except ValueError:
        seconds = math.nan
    if isinstance(value, bool) or not (0 < seconds < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds
