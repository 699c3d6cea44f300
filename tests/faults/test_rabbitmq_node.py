"""Stopping the session's own RabbitMQ node leaves the broker at ``amqp_url`` alone."""

from __future__ import annotations

import pika

from tests.rabbitmq_node import RabbitNode, answers_amqp


def short_cluster_name(connection: pika.BlockingConnection) -> str:
    """The broker's name for itself before the ``@`` (by default its node's name)."""
    return str(connection._impl.server_properties["cluster_name"]).partition("@")[0]


def test_the_session_node_is_its_own(rabbit_node: RabbitNode, amqp_url: str) -> None:
    short_name = rabbit_node.name.partition("@")[0]
    ours = pika.BlockingConnection(pika.URLParameters(rabbit_node.url()))
    try:
        assert short_cluster_name(ours) == short_name
    finally:
        ours.close()
    shared = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        assert short_cluster_name(shared) != short_name
    finally:
        shared.close()


def test_stopping_the_session_node_leaves_the_shared_broker_serving(
    rabbit_node: RabbitNode, amqp_url: str
) -> None:
    shared = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        rabbit_node.ctl("stop_app")
        try:
            assert not answers_amqp(rabbit_node.url())
            shared.channel().close()  # the same connection still works
            assert answers_amqp(amqp_url)
        finally:
            rabbit_node.ctl("start_app")
            rabbit_node.ctl("await_startup")
        assert answers_amqp(rabbit_node.url())
        shared.process_data_events(0)
        assert shared.is_open
    finally:
        shared.close()
