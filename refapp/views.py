"""The HTTP API of the reference app."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from .orders import OrderAlreadyShipped, place_order, ship_order

__all__ = ["blueprint"]

blueprint = Blueprint("orders", __name__)


@blueprint.post("/orders")
def create_order() -> ResponseReturnValue:
    """Place an order: ``{"customer": str, "total_cents": int}`` → 201 and the order."""
    data: Any = request.get_json(silent=True)
    if not isinstance(data, dict):
        return _error(400, "expected a JSON object")
    customer, total_cents = data.get("customer"), data.get("total_cents")
    if not isinstance(customer, str) or not 0 < len(customer.strip()) <= 100:
        return _error(400, "customer: a non-empty string of at most 100 characters")
    if isinstance(total_cents, bool) or not isinstance(total_cents, int) or total_cents < 0:
        return _error(400, "total_cents: a non-negative integer")
    return jsonify(place_order(customer.strip(), total_cents)), 201


@blueprint.post("/orders/<int:order_id>/ship")
def ship(order_id: int) -> ResponseReturnValue:
    """Ship an order → 200 and the order; 404 if unknown, 409 if shipped before."""
    try:
        order = ship_order(order_id)
    except OrderAlreadyShipped:
        return _error(409, "the order was shipped before")
    if order is None:
        return _error(404, "no such order")
    return jsonify(order)


def _error(status: int, message: str) -> ResponseReturnValue:
    return jsonify(error=message), status
