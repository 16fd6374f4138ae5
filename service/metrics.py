"""Prometheus metrics of one app (own registry, so several apps can live in one process, e.g. in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zoo_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("zoo_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("zoo_images", "images run through the model, by task", ["task"], registry=r)
        self.batch_size = Histogram("zoo_batch_size", "images per forward pass", ["task"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.forward_seconds = Histogram("zoo_forward_seconds", "time of one forward pass", ["task"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("zoo_queue_depth", "images waiting for the model", registry=r)
        self.rejected = Counter("zoo_rejected", "images refused because the queue was full", registry=r)
        self.timeouts = Counter("zoo_timeouts", "requests that timed out waiting for the model", registry=r)
        self.gallery_items = Gauge("zoo_gallery_items", "items per gallery", ["gallery"], registry=r)
