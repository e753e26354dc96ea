"""S3 relay: `runner_db.runner_predictions` turning `predictable` -> `detection/{id}.json`, then `-> ready`."""

import asyncio
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from events.clients import mongo_client, object_store
from events.contracts import CHECKPOINTS, PREDICTIONS, DetectionFile, RunnerPrediction, StorageLocation, detection_key, utcnow
from events.log import get_logger
from events.retry import transient
from events.settings import Settings
from events.statuses import RunnerStatus
from events.storage import ObjectStore
from relays.checkpoints import MongoTokenStore
from relays.follow import Relay

log = get_logger(__name__)
NAME = "s3-relay"
PREDICTABLE = RunnerStatus.PREDICTABLE.value
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": "update", "updateDescription.updatedFields.status": PREDICTABLE},
                {"operationType": {"$in": ["insert", "replace"]}, "fullDocument.status": PREDICTABLE},
            ]
        }
    }
]


def exporter(predictions: AsyncCollection, store: ObjectStore):
    @transient
    async def mark_ready(event_id: str, location: StorageLocation) -> None:
        await predictions.update_one(
            {"_id": event_id, "status": PREDICTABLE},
            {"$set": {"status": RunnerStatus.READY.value, "ready_at": utcnow(), "output_s3": location.to_mongo()}},
        )

    async def export(doc: dict[str, Any]) -> None:
        if doc.get("status") != PREDICTABLE:
            return
        job = RunnerPrediction.model_validate(doc)
        location = StorageLocation(bucket=job.bucket, object=detection_key(job.id))
        with structlog.contextvars.bound_contextvars(event_id=job.id):
            if await store.modified_at(location.bucket, location.object) is None:
                result = DetectionFile(
                    event_id=job.id,
                    total_frames=job.total_frames or 0,
                    prediction=job.prediction if job.prediction is not None else job.sorted_prediction(),
                    created_at=job.created_at,
                    completed_at=utcnow(),
                )
                await store.put_bytes(location.bucket, location.object, result.to_bytes(), "application/json")
                log.info("detection file written", object=location.object)
            else:
                log.info("detection file already present", object=location.object, duplicates=1)
            await mark_ready(job.id, location)

    return export


async def main(settings: Settings, stop: asyncio.Event) -> None:
    async with mongo_client(settings.runner_mongo) as client:
        db = client[settings.runner_db]
        relay = Relay(
            name=NAME,
            collection=db[PREDICTIONS],
            pipeline=PIPELINE,
            source_filter={"status": PREDICTABLE},
            handle=exporter(db[PREDICTIONS], object_store(settings)),
            tokens=MongoTokenStore(db[CHECKPOINTS]),
            checkpoint_interval=settings.relay_checkpoint_interval_s,
        )
        await relay.run(stop)
