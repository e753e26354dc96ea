"""The API's endpoints under /api."""

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from api.deps import Services, ServicesDep
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
    bad_request,
    check_bucket,
    check_event_id,
    check_object_key,
    looks_like_video,
)
from events.contracts import DetectionFile, OutboxDocument, OutboxPayload, detection_key, input_key
from events.log import get_logger
from events.statuses import DESCRIPTIONS, OutboxStatus

log = get_logger(__name__)
router = APIRouter()
CLEANED_PREFIXES = ("input/", "detection/")


@router.get("", include_in_schema=False)
@router.get("/")
@router.get("/health")
async def health() -> Health:
    return Health()


async def enqueue(services: Services, event_id: str, bucket: str, key: str) -> None:
    entry = OutboxDocument(id=event_id, payload=OutboxPayload(bucket=bucket, object=key))
    await services.outbox.insert_one(entry.to_mongo())
    log.info("job enqueued", event_id=event_id, bucket=bucket, object=key)


@router.post("/upload_video")
async def upload_video(
    services: ServicesDep,
    file: Annotated[UploadFile, File(description="the video")],
    bucket: Annotated[str | None, Form()] = None,
) -> Accepted:
    bucket = check_bucket(bucket or services.settings.default_bucket)
    head = await file.read(PROBE_BYTES)
    if not head:
        raise bad_request("the uploaded file is empty")
    if not looks_like_video(head):
        raise bad_request("the uploaded file is not a video container", status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
    await file.seek(0)
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


@router.post("/request")
async def request_video(services: ServicesDep, body: VideoRequest) -> Accepted:
    bucket = check_bucket(body.bucket or services.settings.default_bucket)
    key = check_object_key(body.object)
    if await services.store.modified_at(bucket, key) is None:
        raise bad_request(f"object {bucket}/{key} does not exist", status.HTTP_404_NOT_FOUND)
    event_id = str(uuid.uuid4())
    await enqueue(services, event_id, bucket, key)
    return Accepted(event_id=event_id)


def describe(doc: dict[str, Any], ready_at: datetime | None) -> dict[str, Any]:
    """Status fields of one job: ready if its detection file exists, otherwise its outbox status."""
    code = OutboxStatus.READY.value if ready_at else doc["status"]
    end = ready_at or (doc.get("failed_at") if code == OutboxStatus.FAILED else None)
    seconds = elapsed_seconds(doc["created_at"], end)
    return {
        "status_description": DESCRIPTIONS.get(code, code),
        "processing_time_seconds": seconds,
        "processing_time_formatted": format_duration(seconds),
        "error": doc.get("error") if code == OutboxStatus.FAILED else None,
        "code": code,
    }


@router.get("/status/all")
async def status_all(services: ServicesDep) -> Operations:
    docs = await services.outbox.find().sort("created_at", 1).to_list(None)
    finished: dict[str, datetime] = {}  # one listing per bucket, not one lookup per job
    for bucket in {doc["payload"]["bucket"] for doc in docs}:
        finished.update(await services.store.list_prefix(bucket, "detection/"))
    operations = []
    for doc in docs:
        info = describe(doc, finished.get(detection_key(doc["_id"])))
        operations.append(Operation(video_id=doc["_id"], status_code=info.pop("code"), **info))
    return Operations(operations=operations, total=len(operations))


@router.get("/result_video/{event_id}", responses={404: {"description": "unknown event id"}})
async def result_video(services: ServicesDep, event_id: str) -> ResultReady | ResultPending:
    event_id = check_event_id(event_id)
    doc = await services.outbox.find_one({"_id": event_id})
    if doc is None:
        raise bad_request(f"no job with event_id {event_id}", status.HTTP_404_NOT_FOUND)
    bucket, key = doc["payload"]["bucket"], detection_key(event_id)
    ready_at = await services.store.modified_at(bucket, key)
    info = describe(doc, ready_at)
    code = info.pop("code")
    if ready_at is not None:
        raw = await services.store.get_bytes(bucket, key)
        if raw is not None:
            result = await run_in_threadpool(DetectionFile.from_bytes, raw)
            info.pop("status_description"), info.pop("error")
            return ResultReady(event_id=event_id, prediction=result.prediction, **info)
    return ResultPending(status=code, event_id=event_id, **info)


@router.delete("/cleanup/all")
async def cleanup_all(services: ServicesDep) -> Cleaned:
    jobs = (await services.outbox.delete_many({})).deleted_count
    await services.predictions.delete_many({})
    objects = 0
    for bucket in await services.store.buckets():
        for prefix in CLEANED_PREFIXES:
            objects += await services.store.delete_prefix(bucket, prefix)
    log.info("cleanup done", jobs_deleted=jobs, objects_deleted=objects)
    return Cleaned(jobs_deleted=jobs, objects_deleted=objects)
