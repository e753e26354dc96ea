"""What a finished job's tracks give: counts for new zones (`POST /api/jobs/{id}/zones`, no detecting
again) and the annotated video (`POST` and `GET /api/jobs/{id}/render`, `GET /api/jobs/{id}/annotated.mp4`).

The annotated video is made by the render workers, never here: a request is a field of the job's record,
which the outbox relay publishes. Whether it is made is storage's to say, as for the result itself:
`annotated/{id}.mp4` exists, or `annotated/{id}.failed.json` says why it could not be."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import StreamingResponse

from analytics.analysis import recount
from api.deps import Services, ServicesDep
from api.jobs import views
from api.routes.common import NOT_FOUND, JobId
from api.schemas import Problem, RenderState, ZonesAnswer, ZonesRequest
from api.streaming import ranged
from api.validation import client_error
from events import detection_file
from events.contracts import (
    FailureFile,
    OutboxDocument,
    OutboxPayload,
    annotated_failure_key,
    annotated_key,
    detection_key,
    zone_problem,
)
from events.statuses import OutboxStatus

router = APIRouter()
NOT_READY: dict[int | str, dict] = {409: {"model": Problem, "description": "the job is not ready (or not tracked)"}}
RECOUNTS = asyncio.Semaphore(2)  # a long video's recount reads its whole result: two at a time


async def finished(services: Services, event_id: str) -> OutboxPayload:
    """The job's location, if its result exists: 404 for an unknown job, 409 for one not ready."""
    doc = await services.jobs.get(event_id)
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    (view,) = await views(services.store, [doc])
    if view.status != OutboxStatus.READY:
        raise client_error(f"job {event_id} is {view.status}, not ready: nothing to count or draw yet", 409)
    return view.state.payload


@router.post(
    "/jobs/{event_id}/zones",
    response_model_exclude_none=True,
    responses={**NOT_FOUND, **NOT_READY, 400: {"model": Problem, "description": "two zones of the same name"}},
)
async def zones(services: ServicesDep, event_id: JobId, body: ZonesRequest) -> ZonesAnswer:
    """Count a finished, tracked job's objects for new zones, from its stored tracks: nothing is detected
    or tracked again, so drawing a line takes a few tries at little cost."""
    if problem := zone_problem(body.zones):
        raise client_error(problem)
    location = await finished(services, event_id)
    async with RECOUNTS, services.store.local_copy(location.bucket, detection_key(event_id)) as path:
        head = await asyncio.to_thread(detection_file.header, path)
        if not head.get("tracked"):
            raise client_error(f"job {event_id} was not tracked (track=false): zones count tracks", 409)
        counted = await asyncio.to_thread(recount, body.zones, detection_file.frames(path), head.get("fps"),
                                          head.get("total_frames"), head.get("stride"))  # fmt: skip
    return ZonesAnswer(event_id=event_id, zones=counted)


async def render_state(services: Services, event_id: str, location: OutboxPayload, asked: bool) -> RenderState:
    if await services.store.exists(location.bucket, annotated_key(event_id)):
        return RenderState(event_id=event_id, status="ready", url=f"/api/jobs/{event_id}/annotated.mp4")
    failure = await services.store.get_bytes(location.bucket, annotated_failure_key(event_id))
    if failure is not None:
        try:
            reason = FailureFile.from_bytes(failure).error
        except ValueError:
            reason = "the rendering failed"
        return RenderState(event_id=event_id, status="failed", error=reason)
    return RenderState(event_id=event_id, status="rendering" if asked else "none")


@router.get("/jobs/{event_id}/render", responses=NOT_FOUND)
async def render_status(services: ServicesDep, event_id: JobId) -> RenderState:
    """Whether the job's annotated video is made, being made, failed (with why), or never asked for."""
    doc = await services.jobs.get(event_id)
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    job = OutboxDocument.model_validate(doc)
    asked = bool(job.payload.options and job.payload.options.render) or job.render_requested_at is not None
    return await render_state(services, event_id, job.payload, asked)


@router.post("/jobs/{event_id}/render", status_code=status.HTTP_202_ACCEPTED, responses={**NOT_FOUND, **NOT_READY})
async def render(services: ServicesDep, event_id: JobId) -> RenderState:
    """Ask for a finished job's annotated video (again, after a failure); answers where it stands."""
    location = await finished(services, event_id)
    state = await render_state(services, event_id, location, True)
    if state.status == "ready":
        return state
    if state.status == "failed":
        await services.store.delete(location.bucket, annotated_failure_key(event_id))
    await services.jobs.request_render(event_id)
    return RenderState(event_id=event_id, status="rendering")


@router.get(
    "/jobs/{event_id}/annotated.mp4",
    response_class=StreamingResponse,
    responses={200: {"content": {"video/mp4": {"example": "(the video's bytes)"}}, "description": "the video"},
               206: {"content": {"video/mp4": {"example": "(bytes 0-1023)"}}, "description": "a byte range"},
               404: {"model": Problem, "description": "unknown job, or no annotated video (yet)"},
               416: {"model": Problem, "description": "a range outside the video"}},
)  # fmt: skip
async def annotated(
    services: ServicesDep, event_id: JobId, range_header: Annotated[str | None, Header(alias="Range")] = None
) -> Response:
    """The annotated H.264 MP4 (boxes, labels, track ids, zones), with HTTP range requests."""
    location = await services.jobs.location(event_id)
    key = annotated_key(event_id)
    size = await services.store.size(location.bucket, key) if location else None
    if location is None or size is None:
        raise client_error(f"no annotated video for event_id {event_id} (POST .../render asks for it)", 404)
    return ranged(services.store, location.bucket, key, size, range_header, "video/mp4")
