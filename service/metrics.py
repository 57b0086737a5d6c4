"""Prometheus metrics on a registry owned by the app (no module-level globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "medsearch_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "medsearch_request_seconds", "HTTP latency", ["route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.embed = Histogram(
            "medsearch_embed_seconds", "encoder run per batch", ["kind"], buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "medsearch_embed_batch_size", "requests per encoder run", ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.search = Histogram(
            "medsearch_search_seconds", "FAISS search incl. filters", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("medsearch_queue_depth", "queued requests", ["kind"], registry=r)
        self.index_size = Gauge("medsearch_index_vectors", "vectors in the index", registry=r)
        self.index_version = Gauge(
            "medsearch_index_version_info", "published index version", ["version"], registry=r
        )
        self.text_cache = Counter(
            "medsearch_text_cache", "text embedding cache lookups", ["result"], registry=r
        )

    def batch_observer(self, kind: str) -> Callable[[int, float], None]:
        def observe(size: int, seconds: float) -> None:
            self.embed.labels(kind).observe(seconds)
            self.batch_size.labels(kind).observe(size)

        return observe

    def set_index(self, version: str, size: int) -> None:
        self.index_version.clear()
        self.index_version.labels(version).set(1)
        self.index_size.set(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
