"""The extension's configuration: its keys, their defaults, and reading them.

Every key has the ``SIGNALBUS_`` prefix and is spelled in this module only.
``init_app`` sets the defaults that the app config lacks; the readers below
(:func:`channel_setting`, :func:`listener_settings`,
:func:`publisher_settings`) take any mapping, use the default for a key that
is missing or ``None``, and raise :class:`~signalbus.errors.ConfigurationError`
naming the key for a value signalbus cannot work with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, MissingSettingError
from .redaction import redact_url

__all__ = [
    "ALWAYS_NOTIFY",
    "CHANNEL",
    "DEFAULT_CHANNEL",
    "DEFAULT_CONFIG",
    "MAX_ATTEMPTS",
    "MAX_CHANNEL_BYTES",
    "MAX_SECONDS",
    "MAX_WORKERS",
    "METRICS_HOST",
    "METRICS_PORT",
    "PROBE_INTERVAL",
    "RABBITMQ_TIMEOUT",
    "RABBITMQ_URL",
    "READY_FAILING_SECONDS",
    "SWEEP_INTERVAL",
    "WORKERS",
    "ListenerSettings",
    "PublisherSettings",
    "channel_setting",
    "check_channel",
    "check_flag",
    "check_port",
    "check_seconds",
    "check_workers",
    "effective_settings",
    "listener_settings",
    "max_attempts_setting",
    "publisher_settings",
]

#: The channel the triggers notify and the listener listens on.
CHANNEL = "SIGNALBUS_CHANNEL"
#: Seconds between the listener's sweeps of every model.
SWEEP_INTERVAL = "SIGNALBUS_SWEEP_INTERVAL"
#: Seconds a silent LISTEN connection waits before it is probed.
PROBE_INTERVAL = "SIGNALBUS_PROBE_INTERVAL"
#: How many worker threads of a listener flush its models.
WORKERS = "SIGNALBUS_WORKERS"
#: Whether the listener stays out of the wake protocol: writers then always notify.
ALWAYS_NOTIFY = "SIGNALBUS_ALWAYS_NOTIFY"
#: How many times a row may fail alone before it is moved to quarantine.
MAX_ATTEMPTS = "SIGNALBUS_MAX_ATTEMPTS"
#: The port of the listener's metrics, probes and status page (none when unset).
METRICS_PORT = "SIGNALBUS_METRICS_PORT"
#: The address that port is bound to.
METRICS_HOST = "SIGNALBUS_METRICS_HOST"
#: Seconds a model may fail before the listener's ``/readyz`` says it is not ready.
READY_FAILING_SECONDS = "SIGNALBUS_READY_FAILING_SECONDS"
#: The broker of :func:`signalbus.rabbitmq.publisher_from_config`.
RABBITMQ_URL = "SIGNALBUS_RABBITMQ_URL"
#: Seconds a publish call may take, connecting included.
RABBITMQ_TIMEOUT = "SIGNALBUS_RABBITMQ_TIMEOUT"

DEFAULT_CHANNEL = "signalbus"

DEFAULT_CONFIG: dict[str, Any] = {
    CHANNEL: DEFAULT_CHANNEL,
    SWEEP_INTERVAL: 60.0,
    PROBE_INTERVAL: 60.0,
    WORKERS: 4,
    ALWAYS_NOTIFY: False,
    MAX_ATTEMPTS: 5,
    METRICS_PORT: None,
    METRICS_HOST: "127.0.0.1",
    READY_FAILING_SECONDS: 60.0,
    RABBITMQ_URL: None,
    RABBITMQ_TIMEOUT: 30.0,
}

#: PostgreSQL truncates longer identifiers, channel names included.
MAX_CHANNEL_BYTES = 63

#: The longest interval or timeout taken, in seconds: a week.
MAX_SECONDS = 7 * 24 * 3600.0

#: The most workers a listener may have: each may hold two connections per database.
MAX_WORKERS = 64

_RABBITMQ_URL_EXAMPLE = "amqp://user:password@localhost:5672/%2F"


@dataclass(frozen=True)
class ListenerSettings:
    """What a :class:`~signalbus.listener.Listener` reads from the config."""

    channel: str
    sweep_interval: float
    probe_interval: float
    workers: int
    always_notify: bool
    #: ``None``: no metrics, probes or status page.
    metrics_port: int | None
    metrics_host: str
    ready_failing_seconds: float


@dataclass(frozen=True)
class PublisherSettings:
    """What a :class:`~signalbus.rabbitmq.Publisher` reads from the config."""

    url: str
    timeout: float

    def __repr__(self) -> str:
        return f"PublisherSettings(url={redact_url(self.url)!r}, timeout={self.timeout!r})"


def channel_setting(config: Mapping[str, Any]) -> str:
    """Return the checked ``SIGNALBUS_CHANNEL`` of *config*."""
    return check_channel(_get(config, CHANNEL), CHANNEL)


def listener_settings(
    config: Mapping[str, Any],
    *,
    sweep_interval: float | None = None,
    workers: int | None = None,
    metrics_port: int | None = None,
) -> ListenerSettings:
    """Return the checked listener settings of *config*.

    *sweep_interval*, *workers* and *metrics_port*, when given, override their keys.
    """
    if sweep_interval is None:
        sweep_interval = _get(config, SWEEP_INTERVAL)
    if workers is None:
        workers = _get(config, WORKERS)
    if metrics_port is None:
        metrics_port = _get(config, METRICS_PORT)
    host = _get(config, METRICS_HOST)
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"{METRICS_HOST} must be a host name or address, not {host!r}")
    return ListenerSettings(
        channel=channel_setting(config),
        sweep_interval=check_seconds(SWEEP_INTERVAL, sweep_interval),
        probe_interval=check_seconds(PROBE_INTERVAL, _get(config, PROBE_INTERVAL)),
        workers=check_workers(WORKERS, workers),
        always_notify=check_flag(ALWAYS_NOTIFY, _get(config, ALWAYS_NOTIFY)),
        metrics_port=None if metrics_port is None else check_port(METRICS_PORT, metrics_port),
        metrics_host=host,
        ready_failing_seconds=check_seconds(
            READY_FAILING_SECONDS, _get(config, READY_FAILING_SECONDS)
        ),
    )


def max_attempts_setting(config: Mapping[str, Any]) -> int:
    """Return the checked ``SIGNALBUS_MAX_ATTEMPTS`` of *config*: a positive whole number."""
    value = _get(config, MAX_ATTEMPTS)
    try:
        attempts = int(value) if isinstance(value, int | str) else 0
    except ValueError:
        attempts = 0
    if isinstance(value, bool) or attempts < 1:
        raise ConfigurationError(f"{MAX_ATTEMPTS} must be a positive whole number, not {value!r}")
    return attempts


def publisher_settings(config: Mapping[str, Any]) -> PublisherSettings:
    """Return the checked publisher settings of *config*.

    Raises :class:`~signalbus.errors.MissingSettingError` (a ``KeyError``) when
    ``SIGNALBUS_RABBITMQ_URL`` is not set.
    """
    url = _get(config, RABBITMQ_URL)
    if not url:
        raise MissingSettingError(f"{RABBITMQ_URL} is not set: give the RabbitMQ URL, e.g. "
                                  f"{_RABBITMQ_URL_EXAMPLE}")  # fmt: skip
    if not isinstance(url, str):
        raise ConfigurationError(f"{RABBITMQ_URL} must be a string, not {type(url).__name__}")
    return PublisherSettings(url, check_seconds(RABBITMQ_TIMEOUT, _get(config, RABBITMQ_TIMEOUT)))


def check_channel(channel: Any, name: str = "The channel") -> str:
    """Return *channel*, or raise :class:`ConfigurationError` if PostgreSQL would not take it.

    A bad channel must fail early: in a trigger it would make every ``INSERT``
    into the table fail, and a listener would silently listen on a truncated name.
    *name* is how the message calls it (e.g. the config key).
    """
    if not isinstance(channel, str) or not channel:
        raise ConfigurationError(f"{name} must be a non-empty string, not {channel!r}")
    if len(channel.encode()) > MAX_CHANNEL_BYTES:
        raise ConfigurationError(f"{name} {channel!r} is longer than {MAX_CHANNEL_BYTES} bytes")
    return channel


def check_seconds(name: str, value: Any) -> float:
    """Return *value* as a number of seconds up to :data:`MAX_SECONDS`.

    Numeric strings are taken too: config often comes from the environment.
    Anything else raises :class:`ConfigurationError` naming *name*.
    """
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) else math.nan
    except (ValueError, OverflowError):
        seconds = math.nan
    if isinstance(value, bool) or not (0 < seconds <= MAX_SECONDS):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, at most {MAX_SECONDS:g}, not {value!r}"
        )
    return seconds


def check_workers(name: str, value: Any) -> int:
    """Return *value* as a number of workers, 1 to :data:`MAX_WORKERS`.

    Integer strings are taken too; anything else raises :class:`ConfigurationError`.
    """
    try:
        workers = int(value) if isinstance(value, int | str) else 0
    except ValueError:
        workers = 0
    if isinstance(value, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigurationError(
            f"{name} must be a whole number from 1 to {MAX_WORKERS}, not {value!r}"
        )
    return workers


def check_port(name: str, value: Any) -> int:
    """Return *value* as a TCP port, 0 (any free one) to 65535.

    Integer strings are taken too; anything else raises :class:`ConfigurationError`.
    """
    try:
        port = int(value) if isinstance(value, int | str) else -1
    except ValueError:
        port = -1
    if isinstance(value, bool) or not 0 <= port <= 65535:
        raise ConfigurationError(f"{name} must be a port number from 0 to 65535, not {value!r}")
    return port


#: The prefix of every key of signalbus (an app may use it for keys of its own).
PREFIX = "SIGNALBUS_"


def effective_settings(config: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """Return ``(key, value, source)`` for every ``SIGNALBUS_*`` key of *config* and default.

    *source* is ``"default"`` for a signalbus key at its default value,
    ``"app config"`` for one set otherwise, and ``"app config, not a signalbus
    setting"`` for another key with the prefix. Values are as given, secrets
    included: mask them before showing them.
    """
    settings = []
    for key in sorted({*DEFAULT_CONFIG, *(key for key in config if key.startswith(PREFIX))}):
        value = config.get(key)
        if key not in DEFAULT_CONFIG:
            source = "app config, not a signalbus setting"
        elif value is None or value == DEFAULT_CONFIG[key]:
            value, source = DEFAULT_CONFIG[key], "default"
        else:
            source = "app config"
        settings.append((key, value, source))
    return settings


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def check_flag(name: str, value: Any) -> bool:
    """Return *value* as a boolean: a bool, or a string such as ``"true"`` or ``"0"``.

    Anything else raises :class:`ConfigurationError` naming *name*.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def _get(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    return DEFAULT_CONFIG[key] if value is None else value
