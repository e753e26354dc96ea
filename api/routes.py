"""The API's endpoints under /api."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.responses import StreamingResponse
from pymongo import WriteConcern
from starlette.concurrency import iterate_in_threadpool

from api.deps import ApiKeyDep, Services, ServicesDep
from api.schemas import (
    Accepted,
    Cleaned,
    Health,
    Operation,
    Operations,
    ResultPending,
    ResultReady,
    VideoRequest,
)
from api.timing import elapsed_seconds, format_duration
from api.validation import (
    PROBE_BYTES,
    check_bucket,
    check_event_id,
    check_object_key,
    client_error,
    looks_like_video,
)
from events import detection_file
from events.contracts import (
    FRAMES,
    FailureFile,
    OutboxDocument,
    OutboxPayload,
    detection_key,
    failure_key,
    input_key,
)
from events.log import get_logger
from events.statuses import DESCRIPTIONS, OutboxStatus
from events.storage import ObjectStore, PermanentStorageError

log = get_logger(__name__)
router = APIRouter()
CLEANED_PREFIXES = ("input/", "detection/", "failed/")


@router.get("", include_in_schema=False)
@router.get("/")
@router.get("/health")
async def health() -> Health:
    return Health()


# The write that acknowledges a job to a client is durable before the answer: on a majority of the
# replica set and in its journal (the local stack's SecantusDB syncs each commit).
DURABLE = WriteConcern(w="majority", j=True)


async def enqueue(services: Services, event_id: str, bucket: str, key: str) -> None:
    entry = OutboxDocument(id=event_id, payload=OutboxPayload(bucket=bucket, object=key))
    await services.outbox.with_options(write_concern=DURABLE).insert_one(entry.to_mongo())
    log.info("job enqueued", event_id=event_id, bucket=bucket, object=key)


@router.post("/upload_video", dependencies=[ApiKeyDep])
async def upload_video(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="the video")],
    bucket: Annotated[str | None, Form()] = None,
) -> Accepted:
    bucket = check_bucket(bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    head = await file.read(PROBE_BYTES)
    if not head:
        raise client_error("the uploaded file is empty")
    if not looks_like_video(head):
        raise client_error("the uploaded file is not a video container", status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    await file.seek(0)
    await services.outbox.database.command("ping")  # the database is down: 503 now, before storing the video
    event_id = str(uuid.uuid4())
    key = input_key(event_id)
    await services.store.ensure_bucket(bucket)
    size = await services.store.put_file(bucket, key, file.file, file.content_type or "video/mp4")
    try:
        await enqueue(services, event_id, bucket, key)
    except BaseException:
        await services.store.delete_prefix(bucket, key)  # leave nothing behind
        raise
    log.info("video uploaded", event_id=event_id, bytes=size)
    return Accepted(event_id=event_id)


@router.post("/request", dependencies=[ApiKeyDep])
async def request_video(services: ServicesDep, body: VideoRequest) -> Accepted:
    bucket = check_bucket(body.bucket or services.settings.default_bucket, services.settings.bucket_allowlist)
    key = check_object_key(body.object)
    if await services.store.modified_at(bucket, key) is None:
        raise client_error(f"object {bucket}/{key} does not exist", status.HTTP_404_NOT_FOUND)
    event_id = str(uuid.uuid4())
    await enqueue(services, event_id, bucket, key)
    return Accepted(event_id=event_id)


@dataclass(frozen=True)
class Outcome:
    """Where a job stands: its result or failure in storage if there is one, else its outbox status."""

    status: str
    finished_at: datetime | None = None
    error: str | None = None

    def times(self, created_at: datetime) -> dict[str, Any]:
        seconds = elapsed_seconds(created_at, self.finished_at)
        return {"processing_time_seconds": seconds, "processing_time_formatted": format_duration(seconds)}

    def description(self) -> str:
        return DESCRIPTIONS.get(self.status, self.status)


async def read_failure(services: Services, bucket: str, event_id: str) -> Outcome | None:
    try:
        raw = await services.store.get_bytes(bucket, failure_key(event_id))
    except PermanentStorageError:  # the bucket is gone: the outbox says what became of the job
        return None
    if raw is None:
        return None
    failure = FailureFile.from_bytes(raw)
    return Outcome(OutboxStatus.FAILED.value, failure.failed_at, failure.error)


def from_outbox(doc: dict[str, Any]) -> Outcome:
    if doc["status"] == OutboxStatus.FAILED:  # the outbox relay could not even send it
        return Outcome(OutboxStatus.FAILED.value, doc.get("failed_at"), doc.get("error"))
    return Outcome(doc["status"])


@router.get("/status/all")
async def status_all(services: ServicesDep) -> Operations:
    docs = await services.outbox.find().sort("created_at", 1).to_list(None)
    stored: dict[tuple[str, str], datetime] = {}  # one listing per bucket and outcome, not a lookup per job
    for bucket in {doc["payload"]["bucket"] for doc in docs}:
        for prefix in ("detection/", "failed/"):
            stored.update(((bucket, key), at) for key, at in (await services.store.list_prefix(bucket, prefix)).items())
    operations = []
    for doc in docs:
        event_id, bucket = doc["_id"], doc["payload"]["bucket"]
        if (ready_at := stored.get((bucket, detection_key(event_id)))) is not None:
            outcome = Outcome(OutboxStatus.READY.value, ready_at)
        elif (bucket, failure_key(event_id)) in stored:
            outcome = await read_failure(services, bucket, event_id) or from_outbox(doc)
        else:
            outcome = from_outbox(doc)
        operations.append(
            Operation(
                video_id=event_id,
                status_code=outcome.status,
                status_description=outcome.description(),
                error=outcome.error,
                **outcome.times(doc["created_at"]),
            )
        )
    return Operations(operations=operations, total=len(operations))


async def stream_ready(store: ObjectStore, bucket: str, key: str, head: dict[str, Any]) -> AsyncIterator[bytes]:
    """The `ready` answer, its prediction streamed frame by frame from the detection file."""
    async with store.local_copy(bucket, key) as path:
        yield detection_file.open_object(head)
        async for chunk in iterate_in_threadpool(detection_file.prediction_chunks(path)):
            yield chunk
        yield b"]}"


@router.get(
    "/result_video/{event_id}",
    response_model=ResultReady | ResultPending,
    responses={404: {"description": "unknown event id"}},
)
async def result_video(services: ServicesDep, event_id: str) -> StreamingResponse | ResultPending:
    """The result (its prediction streamed: it may be hundreds of MB) or where the job stands."""
    event_id = check_event_id(event_id)
    doc = await services.outbox.find_one({"_id": event_id})
    if doc is None:
        raise client_error(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    bucket = doc["payload"]["bucket"]
    try:
        finished_at = await services.store.modified_at(bucket, detection_key(event_id))
    except PermanentStorageError:
        finished_at = None
    if finished_at is not None:
        outcome = Outcome(OutboxStatus.READY.value, finished_at)
        head = {"status": outcome.status, "event_id": event_id, **outcome.times(doc["created_at"])}
        body = stream_ready(services.store, bucket, detection_key(event_id), head)
        return StreamingResponse(body, media_type="application/json")
    outcome = await read_failure(services, bucket, event_id) or from_outbox(doc)
    return ResultPending(
        status=outcome.status,
        event_id=event_id,
        status_description=outcome.description(),
        error=outcome.error,
        **outcome.times(doc["created_at"]),
    )


@router.delete("/cleanup/all", dependencies=[ApiKeyDep])
async def cleanup_all(services: ServicesDep) -> Cleaned:
    jobs = (await services.outbox.delete_many({})).deleted_count
    await services.predictions.delete_many({})
    await services.predictions.database[FRAMES].delete_many({})
    objects = 0
    for bucket in await services.store.buckets():
        for prefix in CLEANED_PREFIXES:
            objects += await services.store.delete_prefix(bucket, prefix)
    log.info("cleanup done", jobs_deleted=jobs, objects_deleted=objects)
    return Cleaned(jobs_deleted=jobs, objects_deleted=objects)
