"""What the API does for a client beyond answering: accept a job (an upload, a stored object) and forget
jobs. Each is a command on the read model (`api.readmodel`) and storage; the routes only translate HTTP."""

import contextlib
import uuid
from typing import IO

from api.readmodel import ReadModel
from api.validation import file_label
from events import webhooks
from events.contracts import (
    JobOptions,
    ModelRef,
    OutboxDocument,
    OutboxPayload,
    annotated_failure_key,
    annotated_key,
    detection_key,
    failure_key,
    input_key,
)
from events.log import get_logger
from events.storage import ObjectStore, PermanentStorageError

log = get_logger(__name__)


class BucketRefused(Exception):
    """Storage will not take the upload into this bucket (it is gone, or the credential may not write)."""


async def enqueue(
    jobs: ReadModel, event_id: str, location: OutboxPayload, callback_url: str | None, file_name: str | None,
    client: str,
) -> None:  # fmt: skip
    """The job's outbox document, written durably: from here on the job is never lost."""
    entry = OutboxDocument(id=event_id, client=client, payload=location, callback_url=callback_url,
                           file_name=file_label(file_name),
                           webhook=webhooks.PENDING if callback_url else None)  # fmt: skip
    await jobs.add(entry)
    log.info("job enqueued", event_id=event_id, bucket=location.bucket, object=location.object)


async def accept_upload(
    jobs: ReadModel, store: ObjectStore, bucket: str, video: IO[bytes], content_type: str, callback_url: str | None,
    file_name: str | None, client: str, model: ModelRef | None = None, options: JobOptions | None = None,
) -> str:  # fmt: skip
    """Store an uploaded video and queue its job; the new job's id. Nothing is left behind if it fails."""
    await jobs.ping()  # the database is down: 503 now, before storing the video
    event_id = str(uuid.uuid4())
    key = input_key(event_id)
    try:  # the API never creates a bucket a client named: the allowed ones exist from the start
        size = await store.put_file(bucket, key, video, content_type)
    except PermanentStorageError as error:
        log.error("upload refused by storage", bucket=bucket, reason=error.reason)
        raise BucketRefused(bucket) from error
    try:
        await enqueue(jobs, event_id, OutboxPayload(bucket=bucket, object=key, model=model, options=options),
                      callback_url, file_name, client)  # fmt: skip
    except BaseException:
        await store.delete(bucket, key)  # leave nothing behind
        raise
    log.info("video uploaded", event_id=event_id, bytes=size)
    return event_id


async def accept_request(
    jobs: ReadModel, bucket: str, key: str, callback_url: str | None, client: str, model: ModelRef | None = None,
    options: JobOptions | None = None,
) -> str:  # fmt: skip
    """Queue a job for a video already in storage (its existence checked by the caller); its id."""
    event_id = str(uuid.uuid4())
    location = OutboxPayload(bucket=bucket, object=key, model=model, options=options)
    await enqueue(jobs, event_id, location, callback_url, key, client)
    return event_id


async def forget(jobs: ReadModel, store: ObjectStore, event_id: str, location: OutboxPayload) -> int:
    """Remove one job: the objects the system wrote for it (its upload, result or failure; never a video
    a client had stored itself and `request`ed), then its record. The record's deletion leaves as a
    `deleted` event (outbox relay), and the runner forgets the job too. Returns how many objects went."""
    keys = [detection_key(event_id), failure_key(event_id), annotated_key(event_id), annotated_failure_key(event_id)]
    if location.object == input_key(event_id):
        keys.append(input_key(event_id))
    objects = 0
    for key in keys:
        with contextlib.suppress(PermanentStorageError):  # the bucket is gone: nothing of the job is left there
            objects += await store.delete(location.bucket, key)
    await jobs.remove(event_id)
    return objects


async def forget_all(jobs: ReadModel, store: ObjectStore) -> tuple[int, int]:
    """Remove every job the system knows, with its objects: (jobs, objects) removed."""
    count = objects = 0
    async for event_id, location in jobs.locations():
        objects += await forget(jobs, store, event_id, location)
        count += 1
    return count, objects
