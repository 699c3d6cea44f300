"""The signal model contract: what makes a class a signal model, and using one.

A *signal model* is a mapped class of ``db.Model`` with a
``send_signalbus_message(cls, obj)`` class method; it may also have
``send_signalbus_messages(cls, objs)`` for bursts, and a positive
``signalbus_burst_count`` (default 1). :class:`SignalModel` types the class
itself: signalbus passes classes around, never instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeGuard

import sqlalchemy as sa

from .errors import ConfigurationError

__all__ = [
    "SignalModel",
    "get_burst_count",
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


def send_rows(model: SignalModel, rows: Sequence[Any]) -> None:
    """Send *rows* with the model's batch method if it has one, else one by one."""
    send_many = getattr(model, "send_signalbus_messages", None)
    if len(rows) > 1 and send_many is not None:
        send_many(rows)
    else:
        for row in rows:
            model.send_signalbus_message(row)
