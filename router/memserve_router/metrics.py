"""The router's Prometheus metrics (its own registry: two routers in one process never mix)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class RouterMetrics:
    """Counters the router updates as it routes; gauges read from the cluster on each scrape.

    Args:
        collect: called on each scrape; returns ``{metric: {labels tuple: value}}`` gauge samples
            of the cluster (per-instance load, tree size, event feed figures).
    """

    def __init__(self, collect: Callable[[], dict[str, tuple[tuple[str, ...], dict]]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("memserve_router_requests", "Requests by route and status",
                                ["route", "status"], registry=r)
        self.decision = Histogram(
            "memserve_router_decision_seconds", "Time to pick an instance (tree walk + policy)",
            buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 1e-1), registry=r)
        self.predicted_hit = Counter("memserve_router_predicted_hit_tokens",
                                     "Prompt tokens the router's trees said were cached",
                                     ["role"], registry=r)
        self.actual_hit = Counter("memserve_router_actual_hit_tokens",
                                  "Prompt tokens the instance reported cached (cached_tokens)",
                                  ["role"], registry=r)
        self.prompt_tokens = Counter("memserve_router_prompt_tokens", "Prompt tokens routed",
                                     ["role"], registry=r)
        self.migrations = Counter("memserve_router_migrations", "KV migrations the router asked",
                                  ["outcome"], registry=r)
        self.migration_seconds = Histogram(
            "memserve_router_migration_seconds", "Wall time of a migration the router awaited",
            buckets=(1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r)
        self.migration_bytes = Counter("memserve_router_migration_bytes",
                                       "KV bytes moved by migrations", registry=r)
        self.holds = Counter("memserve_router_prefill_holds",
                             "Requests held for an earlier request's prefill of their prefix",
                             ["outcome"], registry=r)
        self.hold_seconds = Histogram(
            "memserve_router_prefill_hold_seconds", "How long a held request waited",
            buckets=(1e-3, 1e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.retries = Counter("memserve_router_retries",
                               "Requests retried on another instance", registry=r)
        r.register(_Collector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, collect: Callable[[], dict[str, tuple[tuple[str, ...], dict]]]) -> None:
        self._collect = collect

    def collect(self):  # noqa: ANN201 -- prometheus_client's collector protocol
        for name, (labels, samples) in self._collect().items():
            g = GaugeMetricFamily(name, name.replace("_", " "), labels=list(labels))
            for key, value in samples.items():
                g.add_metric(list(key), float(value))
            yield g
