"""Live updates as Server-Sent Events: `GET /api/jobs/events` (every job), `GET /api/jobs/{id}/events`."""

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from api import live
from api.deps import Services, ServicesDep
from api.limits import client_of
from api.routes.common import NOT_FOUND, JobId
from api.routes.jobs import MAX_PAGE
from api.schemas import EVENT_STREAM_EXAMPLE, Problem
from api.validation import client_error

router = APIRouter()
STREAM_RETRY_AFTER_S = 10
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"example": EVENT_STREAM_EXAMPLE}}, "description": "Server-Sent Events"},
    429: {"model": Problem, "description": "too many streams open (per client or in all); try after Retry-After"},
}


def event_stream(services: Services, request: Request, job: str | None) -> StreamingResponse:
    """The stream of `live_updates`, or 429 with Retry-After while its client or the server has no room."""
    try:
        services.feed.room(client_of(request.scope))
    except live.TooManyStreams as error:
        retry = {"Retry-After": str(STREAM_RETRY_AFTER_S)}
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(error), retry) from None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
    body = live.updates(services.feed, services.jobs, services.store, request, job, client_of(request.scope), MAX_PAGE)
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@router.get("/jobs/events", response_class=StreamingResponse, responses=SSE)
async def all_job_events(services: ServicesDep, request: Request) -> StreamingResponse:
    """Live status and progress of every job (Server-Sent Events): the jobs in progress first."""
    return event_stream(services, request, None)


@router.get(
    "/jobs/{event_id}/events",
    response_class=StreamingResponse,
    responses={**SSE, **NOT_FOUND},
)
async def job_events(services: ServicesDep, request: Request, event_id: JobId) -> StreamingResponse:
    """Live status and progress of one job (Server-Sent Events); the stream ends after ready or failed."""
    if not await services.jobs.exists(event_id):
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    return event_stream(services, request, event_id)
