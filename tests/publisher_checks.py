"""Helpers shared by the publisher tests: reading test queues back, hiding the password."""

from __future__ import annotations

import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.waiting import wait_until

#: A password with characters a URL must percent-encode, as written in the URL and decoded.
SECRET = "s3cret-p@ss/word"
SECRET_IN_URL = "s3cret-p%40ss%2Fword"


def drain(channel: BlockingChannel, queue: str, count: int) -> list[tuple[object, bytes]]:
    """Get ``count`` messages from ``queue`` (waiting up to 10 s for them) and ack them."""
    got: list[tuple[object, bytes]] = []

    def fetch() -> bool:
        while len(got) < count:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return False
            got.append((properties, body))
        return True

    wait_until(fetch, what=f"{count} messages in {queue}")
    return got


def queue_length(channel: BlockingChannel, queue: str) -> int:
    """How many messages wait in ``queue``."""
    return channel.queue_declare(queue, passive=True).method.message_count


def assert_secret_hidden(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Assert that neither form of :data:`SECRET` shows in ``error`` or the captured logs."""
    for secret in (SECRET, SECRET_IN_URL):
        assert secret not in str(error)
        assert secret not in repr(error)
        assert secret not in caplog.text
        assert all(secret not in str(arg) for arg in error.args)
