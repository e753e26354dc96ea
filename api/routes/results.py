"""What a job produced: `GET /api/result_video/{id}` (the result, or where the job stands) and
`GET /api/video/{id}` (the uploaded video, with byte ranges)."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse

from analytics import exports
from analytics.exports import Format
from api.deps import ServicesDep
from api.jobs import views
from api.routes.common import NOT_FOUND, JobId
from api.schemas import Problem, ResultPending, ResultReady
from api.streaming import exported, ranged, result_etag, stream_ready
from api.validation import client_error
from events.contracts import detection_key
from events.statuses import OutboxStatus

router = APIRouter()


@router.get(
    "/result_video/{event_id}",
    response_model=ResultReady | ResultPending,
    responses=NOT_FOUND,
)
async def result_video(
    services: ServicesDep,
    event_id: JobId,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    output: Annotated[
        Format, Query(alias="format", description="json (the answer), csv, mot (tracks) or coco")
    ] = "json",
) -> Response | ResultPending:
    """The result (its prediction streamed from storage as stored: it may be hundreds of MB) or where the
    job stands. A ready result never changes: it has an `ETag`, and `If-None-Match` with it answers 304.
    `format`: CSV rows (`event_id,frame,class,conf,x1,y1,x2,y2,track_id`), MOT Challenge text
    (`frame,id,x,y,w,h,conf,-1,-1,-1`, frames from 1, tracked objects only) or COCO-style JSON (each sampled
    frame an image); the answer while the job is not ready is the same JSON whatever the format."""
    doc = await services.jobs.get(event_id)
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    (view,) = await views(services.store, [doc])
    bucket, key = view.state.payload.bucket, detection_key(event_id)
    size = await services.store.size(bucket, key) if view.ready_at is not None else None
    if view.status != OutboxStatus.READY or view.ready_at is None or size is None:
        return view.pending()
    tag = result_etag(event_id, size, view.ready_at, output)
    # cached by the browser, and by shared caches only where no key guards the API
    caching = {"ETag": tag, "Cache-Control": f"{'private' if services.settings.api_key else 'public'}, max-age=86400"}
    if if_none_match is not None and tag in [each.strip() for each in if_none_match.split(",")]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=caching)
    if output != "json":
        download = {"Content-Disposition": f'attachment; filename="{event_id}.{exports.SUFFIXES[output]}"'}
        return StreamingResponse(exported(services.store, bucket, key, event_id, output), headers=caching | download,
                                 media_type=exports.MEDIA_TYPES[output])  # fmt: skip
    head = {"status": view.status, "event_id": event_id, **view.times()}
    body = stream_ready(services.store, bucket, key, head, size)
    return StreamingResponse(body, media_type="application/json", headers=caching)


@router.get(
    "/video/{event_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {"video/mp4": {"example": "(the video's bytes)"}}, "description": "the whole video"},
               206: {"content": {"video/mp4": {"example": "(bytes 0-1023 of the video)"}},
                     "description": "the requested byte range (`Range: bytes=0-1023`)"},
               **NOT_FOUND, 416: {"model": Problem, "description": "a range outside the video"}},
)  # fmt: skip
async def video(
    services: ServicesDep, event_id: JobId, range_header: Annotated[str | None, Header(alias="Range")] = None
):
    """The uploaded video, with HTTP range requests (a browser's player seeks with them)."""
    location = await services.jobs.location(event_id)
    size = await services.store.size(location.bucket, location.object) if location else None
    if location is None or size is None:
        raise client_error(f"no video for event_id {event_id}", status.HTTP_404_NOT_FOUND)
    return ranged(services.store, location.bucket, location.object, size, range_header, "video/mp4")
