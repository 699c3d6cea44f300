"""The database of the reference app: orders, and the signals announcing their events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Self

import sqlalchemy as sa
from flask import current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from signalbus import AtomicProceduresMixin, SignalBusMixin

from .publishing import blocked, publish, release

__all__ = ["BURST_COUNT_KEY", "Order", "OrderPlacedSignal", "OrderShippedSignal", "db"]

#: Config key of the signals sent per burst (transaction).
BURST_COUNT_KEY = "SIGNALBUS_BURST_COUNT"


class CustomSQLAlchemy(SignalBusMixin, AtomicProceduresMixin, SQLAlchemy):
    """Flask-SQLAlchemy with the signal bus and atomic procedures."""


db = CustomSQLAlchemy()


class ConfigValue:
    """A class attribute read from the app config (*default* outside an app context)."""

    def __init__(self, key: str, default: Any) -> None:
        self.key = key
        self.default = default

    def __get__(self, instance: Any, owner: type) -> Any:
        if not has_app_context():
            return self.default
        return current_app.config.get(self.key, self.default)


class Order(db.Model):
    """An order of a customer; shipped once."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(100))
    total_cents: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    shipped_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    __table_args__ = (sa.CheckConstraint("total_cents >= 0", name="orders_total_cents_check"),)

    def to_dict(self) -> dict[str, Any]:
        """Return the order as JSON-serialisable data."""
        return {
            "id": self.id,
            "customer": self.customer,
            "total_cents": self.total_cents,
            "created_at": self.created_at.isoformat(),
            "shipped_at": self.shipped_at.isoformat() if self.shipped_at else None,
        }


class SignalMixin:
    """The columns and the sending of the app's signal models.

    Each row is one message: its ``payload`` is the message body, JSON text
    encoded once when the signal is recorded (:meth:`about`), published with
    the model's ``routing_key`` (see :func:`refapp.publishing.publish`).
    """

    routing_key: ClassVar[str]
    signalbus_burst_count = ConfigValue(BURST_COUNT_KEY, 1000)
    signalbus_timestamp_column = "created_at"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    payload: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )

    @classmethod
    def about(cls, data: Mapping[str, Any]) -> Self:
        """Return a signal whose message body is *data* as compact JSON."""
        return cls(payload=json.dumps(data, separators=(",", ":")))

    @classmethod
    def send_signalbus_message(cls, row: Any) -> None:
        """Publish one row."""
        publish(cls, [row])

    @classmethod
    def send_signalbus_messages(cls, rows: Any) -> None:
        """Publish a burst of rows, waiting for the broker's confirmations."""
        publish(cls, rows)

    @classmethod
    def signalbus_blocked(cls) -> bool:
        """Whether the broker blocks publishing: no burst is started meanwhile."""
        return blocked()

    @classmethod
    def signalbus_release(cls) -> None:
        """Close the idle listener worker's broker connection."""
        release()


class OrderPlacedSignal(SignalMixin, db.Model):
    """An order was placed; payload: the order."""

    routing_key = "order.placed"


class OrderShippedSignal(SignalMixin, db.Model):
    """An order was shipped; payload: the order's id and the time of shipping."""

    routing_key = "order.shipped"
