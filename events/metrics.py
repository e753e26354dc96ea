"""Prometheus metrics: one registry per process, served at `/metrics` by every service.

Labels stay bounded: statuses, stages, topics, consumer groups and relay names, never a job id.
Each process serves its own metrics (the local stack's inference workers each on their own port,
compose's scaled replicas each in their container); Prometheus sums them.
"""

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

JOBS = Counter("vdetect_jobs", "Jobs that reached a status (counted by the API's projector)", ["status"])
FRAMES = Counter("vdetect_frames", "Frames through a stage: published (runner), inferred, stored (runner)", ["stage"])
INFERENCE_SECONDS = Histogram(
    "vdetect_inference_seconds",
    "Duration of one detector call (a batch of frames)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELAY_LAG = Histogram(
    "vdetect_relay_lag_seconds",
    "From a change's cluster time to the relay's side effect done",
    ["relay"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Counter("vdetect_dead_letters", "Messages a consumer could not handle", ["topic"])
TOKENS_LOST = Counter("vdetect_resume_tokens_lost", "Resume tokens the server refused (relay reconciled)", ["relay"])
RUNNER_JOBS = Gauge(
    "vdetect_runner_jobs", "Jobs this runner is reading and fanning out now (RUNNER_ACTIVE_JOBS at most)"
)
CONSUMER_LAG = Gauge("vdetect_consumer_lag", "Messages not yet consumed by this process's consumer", ["topic", "group"])


def start_at_zero(metric: Counter | Gauge | Histogram, *label_sets: dict[str, str]) -> None:
    """Series with these labels exist from the start, at 0 (Prometheus' instrumentation guidance): a
    dashboard shows 0 rather than "no data", and `increase()` sees the first event. Each process calls
    it for the label values it knows it will use."""
    for labels in label_sets:
        metric.labels(**labels)


def add_metrics_route(app: FastAPI) -> FastAPI:
    """`GET /metrics` in the Prometheus text format."""

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
