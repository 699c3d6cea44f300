"""The business procedures on orders, each one atomic with the signal it records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .models import Order, OrderPlacedSignal, OrderShippedSignal, db

__all__ = ["OrderAlreadyShipped", "place_order", "ship_order"]


class OrderAlreadyShipped(Exception):
    """The order was shipped before."""


@db.atomic
def place_order(customer: str, total_cents: int) -> dict[str, Any]:
    """Record a new order and its :class:`OrderPlacedSignal`; return the order's data."""
    order = Order(customer=customer, total_cents=total_cents)
    db.session.add(order)
    db.session.flush()
    data = order.to_dict()
    db.session.add(OrderPlacedSignal.about(data))
    return data


@db.atomic
def ship_order(order_id: int) -> dict[str, Any] | None:
    """Mark an order shipped and record its :class:`OrderShippedSignal`.

    Returns the order's data, or ``None`` if there is no such order. Raises
    :class:`OrderAlreadyShipped` if it was shipped before.
    """
    order = Order.lock_instance(order_id)
    if order is None:
        return None
    if order.shipped_at is not None:
        raise OrderAlreadyShipped(order_id)
    order.shipped_at = datetime.now(UTC)
    data = order.to_dict()
    db.session.add(OrderShippedSignal.about({"id": order.id, "shipped_at": data["shipped_at"]}))
    return data
