"""The one module of signalbus that uses pika's private API.

:class:`BatchingConnection` overrides or calls the :class:`pika.SelectConnection`
methods named in :data:`PRIVATE_HOOKS`, which pika does not document and may change
in any release. pika's major version is pinned in ``pyproject.toml``, and a unit test
checks that every hook still exists, so that an upgrade that drops one fails a test
rather than production. Keep every other use of a pika name starting with ``_`` out
of signalbus.
"""

from __future__ import annotations

import pika.exceptions
from pika.adapters.select_connection import SelectConnection

__all__ = ["PRIVATE_HOOKS", "BatchingConnection"]

PRIVATE_HOOKS = ("_adapter_emit_data", "_terminate_stream")
"""The private methods of :class:`pika.SelectConnection` this module relies on."""

_BATCH_BYTES = 1 << 20
"""Size at which gathered outgoing frames are handed to the socket transport."""


# pika is untyped, so its classes are Any to mypy, and strict mode refuses subclassing Any.
class BatchingConnection(SelectConnection):  # type: ignore[misc]
    """A :class:`SelectConnection` that can gather outgoing frames into few large writes.

    pika hands every frame (three per message: method, header, body) to its transport,
    which makes one ``send()`` system call per frame. Between :meth:`start_batch` and
    :meth:`flush_batch` frames are joined instead, so a burst costs a handful of system
    calls. The bytes on the wire, and their order, are unchanged.
    """

    _batch: list[bytes] | None = None
    _batch_size = 0

    def _adapter_emit_data(self, data: bytes) -> None:
        batch = self._batch
        if batch is None:
            super()._adapter_emit_data(data)
            return
        batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= _BATCH_BYTES:
            self._emit_batch()
            self._batch = []

    def abort(self) -> None:
        """Drop the TCP connection without the AMQP closing handshake.

        Completes asynchronously: run the I/O loop until :attr:`is_closed`.
        """
        if not self.is_closed:
            self._terminate_stream(pika.exceptions.ConnectionClosedByClient(200, "aborted"))

    def start_batch(self) -> None:
        """Gather frames until :meth:`flush_batch`."""
        self._batch, self._batch_size = [], 0

    def flush_batch(self) -> None:
        """Hand the gathered frames to the transport and stop gathering."""
        self._emit_batch()
        self._batch = None

    def _emit_batch(self) -> None:
        batch, self._batch_size = self._batch, 0
        # Once open, pika drops its transport exactly when the connection turns closed.
        if batch and not self.is_closed:
            super()._adapter_emit_data(b"".join(batch))
