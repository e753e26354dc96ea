"""S3 relay: the outcome of each job in `runner_db.runner_predictions` -> object storage.

`predictable` -> `detection/{id}.json`, then `predictable -> ready`;
`failed` -> `failed/{id}.json` (why it failed), then `output_s3` is set on the failed job.
Each object is written only if absent, so a replayed change writes nothing twice.
"""

import asyncio
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events.clients import mongo_client, object_store
from events.contracts import (
    CHECKPOINTS,
    PREDICTIONS,
    DetectionFile,
    FailureFile,
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
from events.storage import ObjectStore
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
# Jobs whose outcome is not in storage yet.
SOURCE_FILTER = {"$or": [{"status": PREDICTABLE}, {"status": FAILED, "output_s3": {"$exists": False}}]}


def exporter(predictions: AsyncCollection, store: ObjectStore):
    @transient
    async def mark_exported(job: RunnerPrediction, location: StorageLocation) -> None:
        if job.status == RunnerStatus.PREDICTABLE:
            condition = {"status": PREDICTABLE}
            update = {"status": RunnerStatus.READY.value, "ready_at": utcnow(), "output_s3": location.to_mongo()}
        else:
            condition = {"status": FAILED, "output_s3": {"$exists": False}}
            update = {"output_s3": location.to_mongo()}
        await predictions.update_one({"_id": job.id, **condition}, {"$set": update})

    def outcome(job: RunnerPrediction) -> tuple[StorageLocation, bytes]:
        if job.status == RunnerStatus.PREDICTABLE:
            result = DetectionFile(
                event_id=job.id,
                total_frames=job.total_frames or 0,
                prediction=job.prediction if job.prediction is not None else job.sorted_prediction(),
                created_at=job.created_at,
                completed_at=utcnow(),
            )
            return StorageLocation(bucket=job.bucket, object=detection_key(job.id)), result.to_bytes()
        failure = FailureFile(event_id=job.id, error=job.error or "unknown error", failed_at=job.failed_at or utcnow())
        return StorageLocation(bucket=job.bucket, object=failure_key(job.id)), failure.to_bytes()

    async def export(doc: dict[str, Any]) -> None:
        job = RunnerPrediction.model_validate(doc)
        location, content = outcome(job)
        with structlog.contextvars.bound_contextvars(event_id=job.id):
            if await store.modified_at(location.bucket, location.object) is None:
                await store.put_bytes(location.bucket, location.object, content, "application/json")
                log.info("job outcome written", status=job.status.value, object=location.object)
                crash_point("after_side_effect")
            else:
                log.info("job outcome already present", object=location.object, duplicates=1)
            await mark_exported(job, location)

    return export


def build(db: AsyncDatabase, store: ObjectStore, settings: Settings) -> Relay:
    return Relay(
        name=NAME,
        collection=db[PREDICTIONS],
        pipeline=PIPELINE,
        source_filter=SOURCE_FILTER,
        handle=exporter(db[PREDICTIONS], store),
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with mongo_client(settings.runner_mongo) as client:
        relay = build(client[settings.runner_db], object_store(settings), settings)
        async with http_server(health_app(relay), settings.bind_host, settings.s3_relay_port):
            await relay.run(stop)
