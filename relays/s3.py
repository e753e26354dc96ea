"""S3 relay: the outcome of each job in `runner_db.runner_predictions` -> object storage.

`predictable` -> `detection/{id}.json`, streamed from the job's frame documents, then
`predictable -> ready`; `failed` -> `failed/{id}.json` (why it failed), then `output_s3` is set on
the failed job. Either way the job's frame documents are deleted once it is settled. Each object is
written only if absent, so a replayed change writes nothing twice.

A storage error that no retry can fix (bucket deleted, access denied, invalid key) fails that one job
with the reason, recorded as `export_error`, and the relay moves on; transient errors are retried
and, if they last, stop the relay before its token moves on.
"""

import asyncio
import tempfile
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events import detection_file
from events.clients import mongo_client, object_store
from events.contracts import (
    CHECKPOINTS,
    FRAMES,
    PREDICTIONS,
    DetectionHeader,
    FailureFile,
    FrameDocument,
    RunnerPrediction,
    StorageLocation,
    detection_key,
    failure_key,
    utcnow,
)
from events.crash import crash_point
from events.log import get_logger
from events.retry import transient
from events.runtime import http_server
from events.settings import Settings
from events.statuses import RunnerStatus
from events.storage import ObjectStore, PermanentStorageError
from relays.checkpoints import MongoTokenStore
from relays.follow import Relay, health_app

log = get_logger(__name__)
NAME = "s3-relay"
PREDICTABLE, FAILED = RunnerStatus.PREDICTABLE.value, RunnerStatus.FAILED.value
OUTCOMES = [PREDICTABLE, FAILED]
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": "update", "updateDescription.updatedFields.status": {"$in": OUTCOMES}},
                {"operationType": {"$in": ["insert", "replace"]}, "fullDocument.status": {"$in": OUTCOMES}},
            ]
        }
    }
]
# Jobs whose outcome is not in storage yet, and could still be written there.
SOURCE_FILTER = {
    "$or": [
        {"status": PREDICTABLE},
        {"status": FAILED, "output_s3": {"$exists": False}, "export_error": {"$exists": False}},
    ]
}
SPOOL_BYTES = 8 * 1024 * 1024  # a detection file up to this size is assembled in memory, larger on disk


def exporter(predictions: AsyncCollection, frames: AsyncCollection, store: ObjectStore):
    @transient
    async def mark_exported(job: RunnerPrediction, location: StorageLocation) -> None:
        if job.status == RunnerStatus.PREDICTABLE:
            condition = {"status": PREDICTABLE}
            update = {"status": RunnerStatus.READY.value, "ready_at": utcnow(), "output_s3": location.to_mongo()}
        else:
            condition = {"status": FAILED, "output_s3": {"$exists": False}}
            update = {"output_s3": location.to_mongo()}
        await predictions.update_one({"_id": job.id, **condition}, {"$set": update})

    @transient
    async def mark_unexportable(job: RunnerPrediction, error: PermanentStorageError) -> None:
        """The outcome cannot be written: the job fails with the reason, and is not tried again."""
        reason = f"the job's outcome could not be written to storage: {error}"
        await predictions.update_one(
            {"_id": job.id, "status": {"$in": OUTCOMES}, "output_s3": {"$exists": False}},
            {"$set": {"status": FAILED, "export_error": reason, "error": job.error or reason,
                      "failed_at": job.failed_at or utcnow()}},
        )  # fmt: skip

    async def sorted_frames(job_id: str):
        cursor = frames.find(FrameDocument.range_of(job_id), {"_id": 0, "frame": 1, "objects": 1, "error": 1})
        async for doc in cursor.sort("_id", 1).batch_size(500):
            yield doc

    @transient
    async def write_detection(job: RunnerPrediction, location: StorageLocation) -> None:
        """Stream the frame documents into a spooled file, then upload it: memory stays flat."""
        header = DetectionHeader(
            event_id=job.id, total_frames=job.total_frames or 0, created_at=job.created_at, completed_at=utcnow()
        )
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out:
            frames_written = await detection_file.write(out, header.model_dump(mode="json"), sorted_frames(job.id))
            size = out.tell()
            out.seek(0)
            await store.put_file(location.bucket, location.object, out, "application/json")  # type: ignore[arg-type]
        log.info("detection file assembled", frames=frames_written, bytes=size)

    @transient
    async def write_failure(job: RunnerPrediction, location: StorageLocation) -> None:
        failure = FailureFile(event_id=job.id, error=job.error or "unknown error", failed_at=job.failed_at or utcnow())
        await store.put_bytes(location.bucket, location.object, failure.to_bytes(), "application/json")

    async def export(doc: dict[str, Any]) -> None:
        job = RunnerPrediction.model_validate(doc)
        predictable = job.status == RunnerStatus.PREDICTABLE
        location = StorageLocation(bucket=job.bucket, object=(detection_key if predictable else failure_key)(job.id))
        with structlog.contextvars.bound_contextvars(event_id=job.id):
            try:
                if await transient(store.modified_at)(location.bucket, location.object) is None:
                    await (write_detection if predictable else write_failure)(job, location)
                    log.info("job outcome written", status=job.status.value, object=location.object)
                    crash_point("after_side_effect")
                else:
                    log.info("job outcome already present", object=location.object, duplicates=1)
                await mark_exported(job, location)
            except PermanentStorageError as error:
                log.error("job outcome cannot be written, job failed", error=str(error), export_errors=1)
                await mark_unexportable(job, error)
            # the job is settled, whatever its outcome: its frame documents are not needed any more
            await transient(frames.delete_many)(FrameDocument.range_of(job.id))

    return export


def build(db: AsyncDatabase, store: ObjectStore, settings: Settings) -> Relay:
    return Relay(
        name=NAME,
        collection=db[PREDICTIONS],
        pipeline=PIPELINE,
        source_filter=SOURCE_FILTER,
        handle=exporter(db[PREDICTIONS], db[FRAMES], store),
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with mongo_client(settings.runner_mongo) as client:
        relay = build(client[settings.runner_db], object_store(settings), settings)
        async with http_server(health_app(relay), settings.bind_host, settings.s3_relay_port):
            await relay.run(stop)
