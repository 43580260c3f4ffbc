"""The server's Prometheus metrics, in a registry of their own (several apps in one process
never share or collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by route and status, latency, batch sizes, queue depth, images and faces."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("faceattr_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("faceattr_request_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch = Histogram("faceattr_batch_faces", "Faces per model call (across requests)",
                               buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.queue = Gauge("faceattr_queue_faces", "Faces waiting for a model call", registry=r)
        self.active = Gauge("faceattr_requests_active", "Predict requests admitted and not yet "
                            "answered (the queue that max_queue bounds)", registry=r)  # fmt: skip
        self.images = Counter("faceattr_images", "Images predicted", registry=r)
        self.faces = Counter("faceattr_faces", "Faces predicted", registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
