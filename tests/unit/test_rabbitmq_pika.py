"""The private pika API that signalbus.rabbitmq._pika relies on is still there."""

from __future__ import annotations

import pika

from signalbus.rabbitmq._pika import PRIVATE_HOOKS, BatchingConnection


def test_the_private_pika_hooks_exist() -> None:
    for hook in PRIVATE_HOOKS:
        assert callable(getattr(pika.SelectConnection, hook, None)), f"pika lost {hook}"


def test_batching_connection_shadows_no_other_pika_name() -> None:
    ours = {name for name in vars(BatchingConnection) if not name.startswith("__")}
    ours -= {"_abc_impl", *PRIVATE_HOOKS}  # ABCMeta gives every subclass its own
    assert ours
    assert not {name for name in ours if hasattr(pika.SelectConnection, name)}
