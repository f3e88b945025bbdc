"""``GET /metrics``: Prometheus text format, built with ``prometheus_client``.

Each application has its own ``CollectorRegistry``, so several servers (as
in the tests) never share counters. Most values are read from the service,
the journal and the snapshotter when a scrape arrives, by
:class:`PollerCollector`; only request latency is recorded as requests
finish, from the access log function.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from .auth import READ, TokenFile
from .handlers import BaseHandler
from .health import snapshot_age
from .jobs import STATUSES
from .service import JobService

if TYPE_CHECKING:
    from .connections import LimitedHTTPServer
    from .server import Runtime

# Request latency buckets in seconds: fast reads and writes up to long-poll waits of a minute or more.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0)

# service.counters key -> (metric name without _total, help text)
EVENT_COUNTERS = {
    "created": ("poller_jobs_created", "Jobs created since start."),
    "claimed": ("poller_jobs_claimed", "Jobs claimed by 'next' with claim since start."),
    "completed": ("poller_jobs_completed", "Jobs moved to complete since start."),
    "failed": ("poller_jobs_failed", "Jobs moved to failed by a request since start."),
    "requeued": ("poller_jobs_requeued", "Jobs put back to new by 'requeue' since start."),
    "lease_expired": ("poller_lease_expiries", "Leases that ran out before the runner finished, since start."),
    "unclaimed": ("poller_claims_undelivered", "Claims put back to new because the answer did not reach the runner."),
}


class PollerCollector(Collector):
    """Reads the state of one server at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        service = metrics.service
        yield from self._jobs(service)
        yield from self._journal(service)
        if metrics.runtime is not None:
            yield from self._snapshot(metrics.runtime)
        if metrics.http_server is not None:
            yield from self._connections(metrics.http_server)
        if metrics.tokens is not None:
            yield CounterMetricFamily(
                "poller_token_file_reload_failures",
                "Token file reloads rejected because the file was invalid; the old tokens stay in use.",
                value=metrics.tokens.reload_failures,
            )

    def _jobs(self, service: JobService) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("poller_jobs", "Jobs in the store by status.", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], service.store.count(status))
        yield jobs
        for key, (name, documentation) in EVENT_COUNTERS.items():
            yield CounterMetricFamily(name, documentation, value=service.counters.get(key, 0))
        yield GaugeMetricFamily(
            "poller_waiting_requests", "'next' requests waiting for a job.", value=service.waiters.count
        )

    def _journal(self, service: JobService) -> Iterator[Metric]:
        journal = service.journal
        yield SummaryMetricFamily(
            "poller_journal_append_seconds",
            "Time to encode and write one journal record (page cache, before fsync).",
            count_value=journal.append_count,
            sum_value=journal.append_seconds_total,
        )
        yield SummaryMetricFamily(
            "poller_journal_fsync_seconds",
            "Time of one journal fsync; one fsync may cover many records.",
            count_value=journal.sync_count,
            sum_value=journal.sync_seconds_total,
        )
        yield GaugeMetricFamily(
            "poller_journal_last_fsync_age_seconds",
            "Seconds since the last journal fsync finished, or since start if none has.",
            value=time.monotonic() - journal.last_sync_time,
        )
        yield GaugeMetricFamily(
            "poller_journal_writes_failing",
            "1 while journal appends or fsyncs fail (writes get 503), else 0.",
            value=1 if journal.failing else 0,
        )
        yield GaugeMetricFamily("poller_journal_last_seq", "Seq of the last journal record.", value=journal.last_seq)

    def _snapshot(self, runtime: Runtime) -> Iterator[Metric]:
        snapshotter = runtime.snapshotter
        yield GaugeMetricFamily(
            "poller_snapshot_duration_seconds",
            "Time the last snapshot took, from journal rotation to compaction; 0 before the first.",
            value=snapshotter.last_duration,
        )
        age = snapshot_age(runtime)
        yield GaugeMetricFamily(
            "poller_snapshot_age_seconds",
            "Seconds since the newest snapshot was written; NaN if there is none.",
            value=age if age is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "poller_snapshot_failing", "1 if the last snapshot failed, else 0.", value=1 if snapshotter.last_error else 0
        )
        yield GaugeMetricFamily(
            "poller_recovery_seconds",
            "Time recovery took at start: loading the snapshot and replaying the journal.",
            value=runtime.recovery_seconds,
        )

    def _connections(self, server: LimitedHTTPServer) -> Iterator[Metric]:
        yield GaugeMetricFamily("poller_open_connections", "Open client connections.", value=server.open_connections)
        yield CounterMetricFamily(
            "poller_connections_rejected",
            "Connections closed with 503 because --max-connections were open.",
            value=server.rejected_connections,
        )


class Metrics:
    """The registry of one application and the request latency histogram."""

    def __init__(self, service: JobService, runtime: Runtime | None = None, tokens: TokenFile | None = None) -> None:
        self.service = service
        self.runtime = runtime
        self.tokens = tokens
        # Set by the server once it exists; in-process test apps have none.
        self.http_server: LimitedHTTPServer | None = None
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "poller_request_duration_seconds",
            "Time from reading a request to its last byte written, by method, request type and status code; "
            "the _count series counts requests.",
            ["method", "request_type", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PollerCollector(self))
        # labels() validates and hashes its arguments on every call; the set of
        # (method, request type, code) is small, so keep each child once.
        self._request_children: dict[tuple[str, str | None, int], Any] = {}

    def observe_request(self, method: str, request_type: str | None, code: int, seconds: float) -> None:
        key = (method, request_type, code)
        child = self._request_children.get(key)
        if child is None:
            child = self.request_duration.labels(method, request_type or "none", str(code))
            self._request_children[key] = child
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsHandler(BaseHandler):
    """``/metrics``: needs a token with the ``read`` scope when tokens are in use."""

    def initialize(  # type: ignore[override]
        self, service: JobService, config: object, tokens: TokenFile | None, metrics: Metrics
    ) -> None:
        super().initialize(service, config, tokens)  # type: ignore[arg-type]
        self.metrics = metrics

    def get(self) -> None:
        self.request_type = "metrics"
        self.authorize(READ)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(self.metrics.render())
