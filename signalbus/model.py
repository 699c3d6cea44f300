"""The signal model contract: what makes a class a signal model, and using one.

A *signal model* is a mapped class of ``db.Model`` with a
``send_signalbus_message(cls, obj)`` class method; it may also have
``send_signalbus_messages(cls, objs)`` for bursts, a positive
``signalbus_burst_count`` (default 1), ``signalbus_blocked(cls)``, true
while the broker blocks publishing (no burst is started then: see
:class:`BrokerBlocked`), and ``signalbus_timestamp_column``, the name of a
``DateTime`` column holding when the row was recorded (for the backlog's age
and the delivery time the listener measures). :class:`SignalModel` types the class itself:
signalbus passes classes around, never instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeGuard

import sqlalchemy as sa

from .errors import ConfigurationError, OutageError

__all__ = [
    "BrokerBlocked",
    "SignalModel",
    "check_not_blocked",
    "get_burst_count",
    "get_max_attempts",
    "get_timestamp_column",
    "is_blocked",
    "is_ordered",
    "is_signal_model",
    "lacks_single_send",
    "send_rows",
    "signal_table",
]


class SignalModel(Protocol):
    """A signal model class (``MySignal``, not one of its rows).

    ``send_signalbus_message`` receives an object whose attributes are the
    row's column values and returns once the broker has stored the message.
    """

    __name__: str
    __table__: sa.FromClause

    def send_signalbus_message(self, obj: Any, /) -> object:
        """Send the message of one row (a class method on the model)."""
        ...


def is_signal_model(cls: object) -> TypeGuard[SignalModel]:
    """Tell whether *cls* (a mapped class) has ``send_signalbus_message``."""
    return hasattr(cls, "send_signalbus_message")


def lacks_single_send(cls: object) -> bool:
    """Tell whether *cls* has ``send_signalbus_messages`` but not ``send_signalbus_message``.

    Such a class is not a signal model, which is almost certainly a mistake.
    """
    return hasattr(cls, "send_signalbus_messages") and not is_signal_model(cls)


def signal_table(model: SignalModel) -> sa.Table:
    """Return the table of *model*, which must be mapped to a single table."""
    table = model.__table__
    if not isinstance(table, sa.Table):
        raise TypeError(f"{model.__name__} must be mapped to a table, not to {table!r}")
    return table


def get_burst_count(model: SignalModel) -> int:
    """Return the model's ``signalbus_burst_count`` (default 1), checking it is positive."""
    burst_count = getattr(model, "signalbus_burst_count", 1)
    if isinstance(burst_count, bool) or not isinstance(burst_count, int) or burst_count < 1:
        raise ConfigurationError(
            f"{model.__name__}.signalbus_burst_count must be a positive integer, "
            f"not {burst_count!r}"
        )
    return burst_count


def get_timestamp_column(model: SignalModel) -> sa.Column[Any] | None:
    """Return the column named by the model's ``signalbus_timestamp_column``, if it has one.

    Raises :class:`ConfigurationError` unless it names a ``DateTime`` column of the table.
    """
    name = getattr(model, "signalbus_timestamp_column", None)
    if name is None:
        return None
    table = signal_table(model)
    column = table.columns.get(name) if isinstance(name, str) else None
    if column is None or not isinstance(column.type, sa.DateTime):
        columns = ", ".join(c.name for c in table.columns if isinstance(c.type, sa.DateTime))
        raise ConfigurationError(
            f"{model.__name__}.signalbus_timestamp_column must name a DateTime column of"
            f" {table.name} ({columns or 'it has none'}), not {name!r}"
        )
    return column


def get_max_attempts(model: SignalModel, default: int) -> int:
    """Return the model's ``signalbus_max_attempts``, or *default*, checking it is positive."""
    attempts = getattr(model, "signalbus_max_attempts", default)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(
            f"{model.__name__}.signalbus_max_attempts must be a positive integer, not {attempts!r}"
        )
    return attempts


def is_ordered(model: SignalModel) -> bool:
    """Whether the model's ``signalbus_ordered`` is true: its rows go out strictly in order."""
    return bool(getattr(model, "signalbus_ordered", False))


def send_rows(model: SignalModel, rows: Sequence[Any]) -> None:
    """Send *rows* with the model's batch method if it has one, else one by one."""
    send_many = getattr(model, "send_signalbus_messages", None)
    if len(rows) > 1 and send_many is not None:
        send_many(rows)
    else:
        for row in rows:
            model.send_signalbus_message(row)


class BrokerBlocked(OutageError):
    """The model's ``signalbus_blocked`` says the broker blocks publishing: no burst started."""


def is_blocked(model: SignalModel) -> bool:
    """Tell whether the model's ``signalbus_blocked()`` (if it has one) is true."""
    blocked = getattr(model, "signalbus_blocked", None)
    return blocked is not None and bool(blocked())


def check_not_blocked(model: SignalModel) -> None:
    """Raise :class:`BrokerBlocked` while :func:`is_blocked`.

    A burst started against a blocked broker would hold its transaction open
    until the publish times out.
    """
    if is_blocked(model):
        raise BrokerBlocked(f"the broker blocks publishing {model.__name__} signals")
