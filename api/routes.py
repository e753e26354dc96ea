"""The API's endpoints under /api."""

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi.responses import StreamingResponse
from pymongo import WriteConcern
from starlette.concurrency import iterate_in_threadpool

from api import sessions
from api.deps import Services, ServicesDep, key_check
from api.jobs import CURSOR_PATTERN, MAX_CURSOR, JobView, after_cursor, cursor_of, views
from api.limits import client_of
from api.live import GONE, TooManyStreams
from api.schemas import (
    EVENT_STREAM_EXAMPLE,
    Accepted,
    Cleaned,
    Health,
    Operations,
    Problem,
    ResultPending,
    ResultReady,
    VideoRequest,
)
from api.stack_status import services_down
from api.validation import (
    PROBE_BYTES,
    check_bucket,
    check_callback_url,
    check_object_key,
    client_error,
    file_label,
    looks_like_video,
)
from events import detection_file, webhooks
from events.contracts import OutboxDocument, OutboxPayload, detection_key, failure_key, input_key
from events.jobstate import FINAL
from events.log import get_logger
from events.statuses import OutboxStatus
from events.storage import ObjectStore, PermanentStorageError

log = get_logger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "X-API-Key missing or wrong (when API_KEY is set)"},
    503: {"model": Problem, "description": "the database is unreachable; try again after Retry-After seconds"},
}
router = APIRouter(responses=ERRORS)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "unknown event id"}}
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"example": EVENT_STREAM_EXAMPLE}}, "description": "Server-Sent Events"},
    429: {"model": Problem, "description": "too many streams open (per client or in all); try after Retry-After"},
}
QUOTA: dict[int | str, dict[str, Any]] = {
    429: {"model": Problem, "description": "too many jobs waiting, of this client or in all; try after Retry-After"}
}
MAX_PAGE = 1000


def job_id(event_id: Annotated[uuid.UUID, Path(description="the job's event_id")]) -> str:
    """A path's job id: a UUID (the document says so; anything else is FastAPI's 422), as the jobs store it."""
    return str(event_id)


JobId = Annotated[str, Depends(job_id)]
KEEPALIVE_S = 15
STREAM_RETRY_AFTER_S = 10


def webhook_rules(services: Services) -> tuple[bool, bool]:
    """(webhooks enabled, private callback addresses allowed), from the settings."""
    return services.settings.webhook_secret is not None, services.settings.webhook_allow_private


@router.get("", include_in_schema=False)
@router.get("/")
@router.get("/health")
async def health(services: ServicesDep, request: Request) -> Health:
    """The API answers; with the local stack, also which of its services are down, and why to those who
    hold the key (when API_KEY is set: health answers anyone, and a reason tells of the insides)."""
    path = services.settings.stack_status_file
    down = services_down(path) if path is not None else []
    matches = key_check(services.settings.api_key)
    if down and matches and not matches(request.headers.get("x-api-key")):
        token = request.cookies.get(sessions.COOKIE)
        if token is None or not await sessions.is_valid(services.sessions, token):
            down = [service.model_copy(update={"reason": None}) for service in down]
    return Health(status="degraded" if down else "ok", down=down)


# The write that acknowledges a job to a client is durable before the answer: on a majority of the
# replica set and in its journal (the local stack's SecantusDB syncs each commit).
DURABLE = WriteConcern(w="majority", j=True)


async def enqueue(
    services: Services,
    request: Request,
    event_id: str,
    bucket: str,
    key: str,
    callback_url: str | None,
    file_name: str | None,
) -> None:
    entry = OutboxDocument(
        id=event_id,
        client=client_of(request.scope),
        payload=OutboxPayload(bucket=bucket, object=key),
        callback_url=callback_url,
        file_name=file_label(file_name),
        webhook=webhooks.PENDING if callback_url else None,
    )
    await services.outbox.with_options(write_concern=DURABLE).insert_one(entry.to_mongo())
    log.info("job enqueued", event_id=event_id, bucket=bucket, object=key)


@router.post(
    "/upload_video",
    responses={
        400: {"model": Problem, "description": "an empty file, a bad bucket name or callback URL"},
        403: {"model": Problem, "description": "a bucket outside ALLOWED_BUCKETS"},
        409: {"model": Problem, "description": "the bucket cannot be written to"},
        408: {"model": Problem, "description": "the upload stopped, or dripped (UPLOAD_IDLE_TIMEOUT_S)"},
        413: {"model": Problem, "description": "larger than MAX_UPLOAD_BYTES"},
        415: {"model": Problem, "description": "not a video container"},
        **QUOTA,
    },
)
async def upload_video(
    services: ServicesDep,
    request: Request,
    file: Annotated[UploadFile, File(description="the video")],
    bucket: Annotated[str | None, Form()] = None,
    callback_url: Annotated[str | None, Form(max_length=2048, description="POSTed to when the job ends")] = None,
) -> Accepted:
    bucket = check_bucket(bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    if callback_url:
        await check_callback_url(callback_url, *webhook_rules(services))
    head = await file.read(PROBE_BYTES)
    if not head:
        raise client_error("the uploaded file is empty")
    if not looks_like_video(head):
        raise client_error("the uploaded file is not a video container", status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    await file.seek(0)
    await services.outbox.database.command("ping")  # the database is down: 503 now, before storing the video
    event_id = str(uuid.uuid4())
    key = input_key(event_id)
    try:  # the API never creates a bucket a client named: the allowed ones exist from the start
        size = await services.store.put_file(bucket, key, file.file, file.content_type or "video/mp4")
    except PermanentStorageError as error:
        log.error("upload refused by storage", bucket=bucket, reason=error.reason)
        raise client_error(f"bucket {bucket!r} cannot be written to", status.HTTP_409_CONFLICT) from error
    try:
        await enqueue(services, request, event_id, bucket, key, callback_url or None, file.filename)
    except BaseException:
        await services.store.delete(bucket, key)  # leave nothing behind
        raise
    log.info("video uploaded", event_id=event_id, bytes=size)
    return Accepted(event_id=event_id)


@router.post(
    "/request",
    responses={400: {"model": Problem, "description": "a bad key, bucket name or callback URL"},
               403: {"model": Problem, "description": "a bucket outside ALLOWED_BUCKETS"},
               404: {"model": Problem, "description": "no such object in storage"},
               413: {"model": Problem, "description": "a body larger than MAX_REQUEST_BYTES"}, **QUOTA},
)  # fmt: skip
async def request_video(services: ServicesDep, request: Request, body: VideoRequest) -> Accepted:
    bucket = check_bucket(body.bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    key = check_object_key(body.object)
    if body.callback_url:
        await check_callback_url(body.callback_url, *webhook_rules(services))
    if not await services.store.exists(bucket, key):
        raise client_error(f"object {bucket}/{key} does not exist", status.HTTP_404_NOT_FOUND)
    event_id = str(uuid.uuid4())
    await enqueue(services, request, event_id, bucket, key, body.callback_url or None, key)
    return Accepted(event_id=event_id)


@router.get("/status/all", responses={400: {"model": Problem, "description": "an invalid `after` cursor"}})
async def status_all(
    services: ServicesDep,
    status_filter: Annotated[OutboxStatus | None, Query(alias="status", description="only jobs in this status")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="a page of this many jobs; all if unset")] = None,
    after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_CURSOR,
            pattern=CURSOR_PATTERN,
            description="the `next` cursor of the previous page",
        ),
    ] = None,
) -> Operations:
    """Jobs in the order they were accepted, a page at a time; each job's readiness checked in storage."""
    query: dict[str, Any] = {"status": status_filter.value} if status_filter else {}
    if after is not None:
        try:
            query.update(after_cursor(after))
        except ValueError as error:
            raise client_error(str(error)) from error
    cursor = services.outbox.find(query).sort([("created_at", 1), ("_id", 1)])
    if limit is not None:
        cursor = cursor.limit(limit + 1)  # one more tells whether there is a next page
    docs = await cursor.to_list(None)
    page = await views(services.store, docs[:limit] if limit is not None else docs)
    following = cursor_of(page[-1].state) if limit is not None and len(docs) > limit else None
    operations = [view.operation() for view in page]
    return Operations(operations=operations, total=len(operations), next=following)


async def stream_ready(
    store: ObjectStore, bucket: str, key: str, head: dict[str, Any], size: int
) -> AsyncIterator[bytes]:
    """The `ready` answer: the stored detection file's bytes passed through from storage as they are
    (its `prediction` list is last), after the answer's own members (and the video's frame rate, when
    the file knows it: a player maps frames to time with it). Nothing is parsed but the header."""
    first = b"".join(
        [chunk async for chunk in store.read_range(bucket, key, 0, min(size, detection_file.HEADER_BYTES))]
    )
    if (found := detection_file.split(first)) is None:  # not the layout `detection_file.write` makes
        async for chunk in parsed_ready(store, bucket, key, head):
            yield chunk
        return
    stored, start = found
    yield detection_file.open_object({**head, "fps": stored["fps"]} if stored.get("fps") is not None else head)
    async for chunk in store.read_range(bucket, key, start, size - start):  # the list's members and `]}`
        yield chunk


async def parsed_ready(store: ObjectStore, bucket: str, key: str, head: dict[str, Any]) -> AsyncIterator[bytes]:
    """The `ready` answer from a detection file of another layout, its frames parsed one by one."""
    async with store.local_copy(bucket, key) as path:
        if (fps := (await asyncio.to_thread(detection_file.header, path)).get("fps")) is not None:
            head = {**head, "fps": fps}
        yield detection_file.open_object(head)
        async for chunk in iterate_in_threadpool(detection_file.prediction_chunks(path)):
            yield chunk
        yield b"]}"


def result_etag(event_id: str, size: int, ready_at: datetime) -> str:
    """A ready result never changes: its tag is the job and the stored file's size and time."""
    return '"' + hashlib.sha256(f"{event_id}/{size}/{ready_at.isoformat()}".encode()).hexdigest()[:32] + '"'


@router.get(
    "/result_video/{event_id}",
    response_model=ResultReady | ResultPending,
    responses=NOT_FOUND,
)
async def result_video(
    services: ServicesDep,
    event_id: JobId,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response | ResultPending:
    """The result (its prediction streamed from storage as stored: it may be hundreds of MB) or where the
    job stands. A ready result never changes: it has an `ETag`, and `If-None-Match` with it answers 304."""
    doc = await services.outbox.find_one({"_id": event_id})
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    (view,) = await views(services.store, [doc])
    bucket, key = view.state.payload.bucket, detection_key(event_id)
    size = await services.store.size(bucket, key) if view.ready_at is not None else None
    if view.status != OutboxStatus.READY or view.ready_at is None or size is None:
        return view.pending()
    tag = result_etag(event_id, size, view.ready_at)
    # cached by the browser, and by shared caches only where no key guards the API
    caching = {"ETag": tag, "Cache-Control": f"{'private' if services.settings.api_key else 'public'}, max-age=86400"}
    if if_none_match is not None and tag in [each.strip() for each in if_none_match.split(",")]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=caching)
    head = {"status": view.status, "event_id": event_id, **view.times()}
    body = stream_ready(services.store, bucket, key, head, size)
    return StreamingResponse(body, media_type="application/json", headers=caching)


def sse(view: JobView) -> bytes:
    return f"event: status\ndata: {view.pending().model_dump_json()}\n\n".encode()


async def live_updates(services: Services, request: Request, job: str | None) -> AsyncIterator[bytes]:
    """Server-Sent Events: the current state first, then every change the read model's change stream
    brings; a job's own stream ends after its final status."""
    versions: dict[str, int] = {}  # the version each pending job was last shown at: nothing older is sent

    async def render(docs: list[dict[str, Any]], check_pending: bool) -> tuple[list[bytes], bool]:
        """The messages of the documents not shown yet at their version, and whether the job is over."""
        fresh = [doc for doc in docs if doc.get("version", 0) > versions.get(doc["_id"], -1)]
        messages = []
        for view in await views(services.store, fresh, check_pending):
            messages.append(sse(view))
            if view.status in FINAL:
                if job is not None:
                    return messages, True
                versions.pop(view.state.id, None)  # a final status does not change: memory stays bounded
            else:
                versions[view.state.id] = view.state.version
        return messages, False

    async def current() -> list[dict[str, Any]]:
        if job is not None:
            return [doc] if (doc := await services.outbox.find_one({"_id": job})) else []
        active = {"status": {"$in": [OutboxStatus.NEW.value, OutboxStatus.SENT.value]}}
        return await services.outbox.find(active).sort("created_at", -1).limit(MAX_PAGE).to_list(None)

    async with services.feed.listen(job, client_of(request.scope)) as listener:
        docs, current_state = await current(), True
        if job is not None and not docs:
            return  # deleted meanwhile
        while True:
            messages, over = await render(docs, check_pending=current_state)
            for message in messages:
                yield message
            if over or await request.is_disconnected() or services.feed.closed:
                return
            changes = await listener.next(KEEPALIVE_S)
            current_state = listener.resync
            if listener.resync:  # changes may have been missed: start again from the current state
                listener.resync = False
                docs = await current()
            elif job is not None and changes.get(job) == GONE:
                return
            else:
                docs = [doc for doc in changes.values() if isinstance(doc, dict)]
                if not changes:
                    yield b": keepalive\n\n"  # an SSE comment: keeps proxies from closing a quiet stream


def event_stream(services: Services, request: Request, job: str | None) -> StreamingResponse:
    """The stream of `live_updates`, or 429 with Retry-After while its client or the server has no room."""
    try:
        services.feed.room(client_of(request.scope))
    except TooManyStreams as error:
        retry = {"Retry-After": str(STREAM_RETRY_AFTER_S)}
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(error), retry) from None
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
    return StreamingResponse(live_updates(services, request, job), media_type="text/event-stream", headers=headers)


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
    if await services.outbox.find_one({"_id": event_id}, {"_id": 1}) is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    return event_stream(services, request, event_id)


@router.api_route(
    "/session",
    methods=["POST", "DELETE"],
    status_code=status.HTTP_204_NO_CONTENT,
    responses={204: {"description": "POST: the session cookie is set; DELETE: it is revoked and removed",
                     "headers": {"Set-Cookie": {
        "description": "vdetect_session=...; HttpOnly; Max-Age=43200; SameSite=strict; Path=/api (Secure over TLS)",
        "schema": {"type": "string"}}}},
        401: {"model": Problem, "description": "POST without a valid X-API-Key: a session opens only with the key"},
        403: {"model": Problem, "description": "DELETE with `all=true` without the X-API-Key header"}},
)  # fmt: skip
async def session(
    services: ServicesDep,
    request: Request,
    response: Response,
    every: Annotated[bool, Query(alias="all", description="DELETE: revoke every session (needs X-API-Key)")] = False,
) -> None:
    """POST signs in: the X-API-Key header (checked, like every /api path, before the request is read) is
    exchanged for an HttpOnly session cookie that expires after SESSION_TTL_S, so the web page's uploads,
    event streams and video player work without the key in a URL. DELETE signs out: this cookie's
    session is revoked and the cookie removed; with `all=true` and the key, every session is revoked."""
    if request.method == "DELETE":
        await sign_out(services, request, response, every)
    else:
        await sign_in(services, request, response)


async def sign_in(services: Services, request: Request, response: Response) -> None:
    settings = services.settings
    if (matches := key_check(settings.api_key)) is None:
        return  # no key, no sign-in needed
    if not matches(request.headers.get("x-api-key")):  # a session does not open another one
        raise client_error("a valid X-API-Key header is required", status.HTTP_401_UNAUTHORIZED)
    token, _ = await sessions.open_session(services.sessions, settings.session_ttl_s, client_of(request.scope))
    secure = sessions.secure_cookie(settings.session_cookie_secure, request.url.scheme, request.headers)
    response.set_cookie(sessions.COOKIE, token, max_age=int(settings.session_ttl_s), httponly=True,
                        samesite="strict", secure=secure, path="/api")  # fmt: skip


async def sign_out(services: Services, request: Request, response: Response, every: bool) -> None:
    if every:
        matches = key_check(services.settings.api_key)
        if matches is not None and not matches(request.headers.get("x-api-key")):
            raise client_error("revoking every session needs the X-API-Key header", status.HTTP_403_FORBIDDEN)
        revoked = await sessions.revoke_all(services.sessions)
    else:
        revoked = await sessions.revoke(services.sessions, request.cookies.get(sessions.COOKIE))
    log.info("sessions revoked", sessions=revoked)
    response.delete_cookie(sessions.COOKIE, path="/api", httponly=True, samesite="strict")


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
    doc = await services.outbox.find_one({"_id": event_id}, {"payload": 1})
    size = await services.store.size(doc["payload"]["bucket"], doc["payload"]["object"]) if doc else None
    if doc is None or size is None:
        raise client_error(f"no video for event_id {event_id}", status.HTTP_404_NOT_FOUND)
    try:
        start, end = byte_range(range_header, size)
    except ValueError as error:
        raise HTTPException(status.HTTP_416_RANGE_NOT_SATISFIABLE, str(error),
                            headers={"Content-Range": f"bytes */{size}"}) from error  # fmt: skip
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if range_header is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    body = services.store.read_range(doc["payload"]["bucket"], doc["payload"]["object"], start, end - start + 1)
    code = status.HTTP_206_PARTIAL_CONTENT if range_header is not None else status.HTTP_200_OK
    return StreamingResponse(body, code, headers=headers, media_type="video/mp4")


def byte_range(header: str | None, size: int) -> tuple[int, int]:
    """(first, last) byte of a single `Range: bytes=...` request, or of the whole file without one."""
    if header is None:
        return 0, size - 1
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec or not (first or last):
        raise ValueError(f"unsupported range {header!r}: one range of bytes")
    try:
        if not first:  # the last N bytes
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError as error:
        raise ValueError(f"invalid range {header!r}") from error
    if start > end or start >= size:
        raise ValueError(f"range {header!r} is outside the video's {size} bytes")
    return start, end


async def forget(services: Services, doc: dict[str, Any]) -> int:
    """Remove one job: the objects the system wrote for it (its upload, result or failure; never a video
    a client had stored itself and `request`ed), then its record. The record's deletion leaves as a
    `deleted` event (outbox relay), and the runner forgets the job too. Returns how many objects went."""
    event_id, bucket = doc["_id"], doc["payload"]["bucket"]
    keys = [detection_key(event_id), failure_key(event_id)]
    if doc["payload"]["object"] == input_key(event_id):
        keys.append(input_key(event_id))
    objects = 0
    for key in keys:
        with contextlib.suppress(PermanentStorageError):  # the bucket is gone: nothing of the job is left there
            objects += await services.store.delete(bucket, key)
    await services.outbox.delete_one({"_id": event_id})
    return objects


@router.delete("/jobs/{event_id}", responses=NOT_FOUND)
async def delete_job(services: ServicesDep, event_id: JobId) -> Cleaned:
    """Remove one job: its objects and its records."""
    doc = await services.outbox.find_one({"_id": event_id}, {"payload": 1})
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    objects = await forget(services, doc)
    log.info("job deleted", event_id=event_id, objects_deleted=objects)
    return Cleaned(jobs_deleted=1, objects_deleted=objects)


@router.delete("/cleanup/all")
async def cleanup_all(services: ServicesDep) -> Cleaned:
    """Remove every job the system knows, with its objects; nothing else in the buckets is touched."""
    jobs = objects = 0
    async for doc in services.outbox.find({}, {"payload": 1}):
        objects += await forget(services, doc)
        jobs += 1
    log.info("cleanup done", jobs_deleted=jobs, objects_deleted=objects)
    return Cleaned(jobs_deleted=jobs, objects_deleted=objects)
