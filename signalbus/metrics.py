"""The listener's Prometheus metrics, read from its activity and backlogs at each scrape.

One series per signal model (and per failure kind, per database), never per
row. Nothing is counted twice: the collector reads the listener's
:class:`~signalbus.activity.Activity`, which the workers update anyway, and
its :class:`~signalbus.backlog_watch.BacklogWatch`, which runs no statement
against an idle database.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .activity import FAILURE_KINDS, Activity, Histogram
from .backlog_watch import BacklogWatch

__all__ = ["CONTENT_TYPE", "MetricsCollector", "metrics_registry", "render_metrics"]

#: The content type of :func:`render_metrics`'s text.
CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricsCollector(Collector):
    """Yields the ``signalbus_*`` metrics of one listener."""

    def __init__(self, activity: Activity, backlogs: BacklogWatch) -> None:
        self._activity = activity
        self._backlogs = backlogs

    def collect(self) -> Iterator[Metric]:
        snapshot = self._activity.snapshot()
        backlogs = {model.__name__: backlog for model, backlog in self._backlogs.current().items()}
        sent = CounterMetricFamily(
            "signalbus_sent", "Signal rows sent and deleted.", labels=["signal"]
        )
        failures = CounterMetricFamily(
            "signalbus_send_failures",
            "Failed flushes: kind is outage (database or broker out) or row (the send failed).",
            labels=["signal", "kind"],
        )
        pending = GaugeMetricFamily(
            "signalbus_pending_rows",
            "Rows waiting, as last measured (at most every 5 s; counted up to 100000).",
            labels=["signal"],
        )
        oldest = GaugeMetricFamily(
            "signalbus_oldest_pending_seconds",
            "Age of the next row to send, by its signalbus_timestamp_column (0 when none waits).",
            labels=["signal"],
        )
        quarantined = GaugeMetricFamily(
            "signalbus_quarantined_rows",
            "Rows in quarantine, as last measured (see flask signalbus quarantine).",
            labels=["signal"],
        )
        flush = HistogramMetricFamily(
            "signalbus_flush_seconds",
            "One burst, from its DELETE to its COMMIT.",
            labels=["signal"],
        )
        delivery = HistogramMetricFamily(
            "signalbus_delivery_seconds",
            "From a row's signalbus_timestamp_column to the broker's confirmation.",
            labels=["signal"],
        )
        for signal in snapshot.signals:
            name = signal.name
            sent.add_metric([name], signal.sent)
            for kind in FAILURE_KINDS:
                failures.add_metric([name, kind], signal.failures[kind])
            _add_histogram(flush, name, signal.flush_seconds)
            if signal.delivery_seconds is not None:
                _add_histogram(delivery, name, signal.delivery_seconds)
            backlog = backlogs.get(name)
            if backlog is not None:
                pending.add_metric([name], backlog.pending)
                quarantined.add_metric([name], backlog.quarantined)
                if signal.delivery_seconds is not None:
                    oldest.add_metric([name], backlog.oldest_age or 0.0)
        listening = GaugeMetricFamily(
            "signalbus_listening",
            "1 while the LISTEN connection to the database is up.",
            labels=["database"],
        )
        for database, up in snapshot.listening.items():
            listening.add_metric([database], 1.0 if up else 0.0)
        yield from (sent, failures, pending, oldest, quarantined, flush, delivery, listening)


def metrics_registry(activity: Activity, backlogs: BacklogWatch) -> CollectorRegistry:
    """A registry of one listener's metrics only (not the process-wide default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(activity, backlogs))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry)


def _add_histogram(family: HistogramMetricFamily, name: str, histogram: Histogram) -> None:
    buckets, total = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    family.add_metric([name], buckets, histogram.sum)
