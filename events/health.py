"""The HTTP side of every worker service (relays, runner, inference): `GET /health` and `GET /metrics`.

`/health` answers `{"status": "ok", "service": ..., **report()}`: the service's counters and, for a
Kafka consumer, `"ready"`: whether it has joined its consumer groups. `vdetect health` (the container
healthcheck) fails while a service says `"ready": false`. `GET /health/ready` answers the same with 503
while it does: an HTTP readiness probe (Kubernetes) reads the status code only, so `/health` stays
the liveness probe (the process answers) and `/health/ready` the readiness probe.
"""

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from events import metrics

Report = Callable[[], dict[str, Any]]


def health_app(service: str, report: Report) -> FastAPI:
    app = metrics.add_metrics_route(FastAPI(title=f"vdetect {service}"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": service, **report()}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        answer = {"status": "ok", "service": service, **report()}
        return JSONResponse(answer, status_code=503 if answer.get("ready") is False else 200)

    return app


def counters(stats: Any) -> dict[str, Any]:
    """A stats dataclass as counters; its `started` (a monotonic time), if any, as `uptime_seconds`."""
    values = asdict(stats)
    started = values.pop("started", None)
    if started is not None:
        values["uptime_seconds"] = round(time.monotonic() - started, 3)
    return values
