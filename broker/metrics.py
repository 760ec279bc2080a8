"""What a service counts, and two ways to read it: the `data` of its NATS micro
service's stats (`$SRV.STATS.{service}`, `nats micro stats`), and Prometheus text over
HTTP (`--metrics-port`).

A service declares each metric once with a function that reads it (a counter the
service keeps as a plain int, `len()` of what it holds, the connection's reconnect
count): nothing is copied, a read is always current. The names the services declare are
what operators build dashboards and alerts on: keep them stable. Prometheus sees them
with a `batchdeck_` prefix (counters also with `_total`) and the labels `service` and `id`.

Every micro service carries the same values in the `data` of each of its endpoints
(the micro protocol has no service-wide `data`). The broker and the store serve their
API endpoints; the runner, the scheduler and the notifier get a service of their own,
`batchdeck-{service}`, whose one endpoint `metrics` answers the values as JSON on
`$SRV.METRICS.batchdeck-{service}.{service id}`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from broker import __version__, codec

log = logging.getLogger("batchdeck.metrics")

PROMETHEUS_PREFIX = "batchdeck_"
METRICS_ENDPOINT = "metrics"
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge"]
    """A counter only goes up (from 0 at the process's start); a gauge is a level."""
    help: str
    read: Callable[[], float]


class Metrics:
    """The metrics of one service instance: `service` is its kind (`runner`, `store`, ...),
    `instance` its id (the runner's id; for the broker and the store, the micro
    service's id, set when `attach` is called)."""

    def __init__(self, service: str, instance: str | None = None) -> None:
        self.service = service
        self.instance = instance
        self.micro: Service | None = None
        self._metrics: dict[str, Metric] = {}
        self._own_service = False

    def counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._add(Metric(name, "counter", help, read))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._add(Metric(name, "gauge", help, read))

    def connection(self, nc: Client) -> None:
        """`nats_reconnects`: how often the service's NATS connection came back after a loss."""
        self.counter("nats_reconnects", "times the NATS connection was re-established after a loss",
                     lambda: nc.stats["reconnects"])

    def _add(self, metric: Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is declared twice")
        self._metrics[metric.name] = metric

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._metrics.values()))

    def values(self) -> dict[str, float]:
        """Every metric's current value, by name. One that cannot be read is left out."""
        values = {}
        for metric in self:
            try:
                values[metric.name] = metric.read()
            except Exception as err:  # a metric must never break the stats reply or a scrape
                log.debug("metric %s not read: %r", metric.name, err)
        return values

    # ---- the micro service ---------------------------------------------------------------

    def stats_data(self, endpoint: EndpointStats) -> dict[str, float]:
        return self.values()

    async def serve(self, nc: Client, name: str, description: str, metadata: dict[str, str] | None = None) -> Service:
        """Register a micro service `name` of its own whose stats carry these metrics."""
        self.micro = await add_service(nc, name=name, version=__version__, description=description,
                                       metadata=metadata or {}, stats_handler=self.stats_data)
        self._own_service = True
        if self.instance is None:
            self.instance = self.micro.id
        await self.micro.add_endpoint(name=METRICS_ENDPOINT, subject=f"$SRV.METRICS.{name}.{self.micro.id}",
                                      handler=self._answer, metadata={"kind": "metrics"})
        await nc.flush()  # PING, INFO and STATS are answered from now on
        return self.micro

    def attach(self, service: Service) -> None:
        """Name an existing micro service (the broker's, the store's) as the one these
        metrics belong to; it was started with `stats_data` as its stats handler."""
        self.micro = service
        if self.instance is None:
            self.instance = service.id

    async def close(self) -> None:
        """Stop the micro service `serve` registered (an attached one is its owner's)."""
        if self.micro is not None and self._own_service:
            try:
                await self.micro.stop()
            except Exception as err:  # the connection may be gone already
                log.debug("metrics service not stopped: %r", err)

    async def _answer(self, request: Request) -> None:
        await request.respond(codec.encode(self.values()))


class Exporter:
    """Prometheus text at `http://{host}:{port}/metrics` for the metrics `add`ed, read at
    each scrape; plus the standard `process_*` metrics and, for services with API
    endpoints, the requests per endpoint. Served by prometheus_client from a thread of its
    own: a scrape never waits for the event loop, and only reads plain values."""

    def __init__(self, port: int, host: str = DEFAULT_HOST) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        self._sources: list[Metrics] = []
        self._lock = threading.Lock()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        ProcessCollector(registry=registry)
        self._server, self._thread = start_http_server(port, host, registry=registry)
        self.host = host
        self.port: int = self._server.server_port
        """The port bound (the one asked for, or a free one for 0)."""

    def add(self, metrics: Metrics) -> None:
        with self._lock:
            self._sources.append(metrics)

    def sources(self) -> list[Metrics]:
        with self._lock:
            return list(self._sources)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Collector:
    """prometheus_client's view of an Exporter's metrics: families by name, one sample
    per service instance."""

    LABELS = ("service", "id")

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        # Requests only: the API's handlers answer errors themselves and run as tasks of
        # their own (broker.endpoints), so micro's error count and processing time stay ~0.
        requests = CounterMetricFamily(f"{PROMETHEUS_PREFIX}api_requests", "API requests received, by endpoint",
                                       labels=(*self.LABELS, "endpoint"))
        for source in self.exporter.sources():
            labels = [source.service, source.instance or ""]
            values = source.values()
            for metric in source:
                if metric.name not in values:
                    continue
                family = families.get(metric.name)
                if family is None:
                    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                    family = families[metric.name] = kind(f"{PROMETHEUS_PREFIX}{metric.name}", metric.help,
                                                          labels=self.LABELS)
                family.add_metric(labels, float(values[metric.name]))
            if source.micro is not None:
                for endpoint in source.micro.stats().endpoints:
                    if endpoint.name != METRICS_ENDPOINT:
                        requests.add_metric([*labels, endpoint.name], endpoint.num_requests)
        yield from families.values()
        if requests.samples:
            yield requests
