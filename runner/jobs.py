"""The runner's bookkeeping in `runner_db.runner_predictions`: every write is conditional or idempotent."""

from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from events.contracts import InferenceResult, RunnerPrediction, utcnow
from events.retry import transient
from events.statuses import RunnerStatus

PROCESSING = {"status": RunnerStatus.PROCESSING.value}


class Jobs:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    @transient
    async def create(self, event_id: str, bucket: str, key: str) -> bool:
        """Start tracking a job; False if it already exists (a redelivered outbox event)."""
        try:
            job = RunnerPrediction(id=event_id, bucket=bucket, object=key, updated_at=utcnow())
            await self.collection.insert_one(job.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    @transient
    async def set_total(self, event_id: str, total_frames: int) -> RunnerPrediction | None:
        doc = await self.collection.find_one_and_update(
            {"_id": event_id, **PROCESSING},
            {"$set": {"total_frames": total_frames, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return RunnerPrediction.model_validate(doc) if doc else None

    async def record(self, event_id: str, results: list[InferenceResult]) -> tuple[RunnerPrediction | None, int]:
        """Store frames of one job, each at most once (first write wins). Returns the job as it stands
        after the writes and how many frames were new.

        Usually no frame of the batch is stored yet and one write stores them all; after a redelivery
        the frames are written one by one. Progress resets the resend count: a job fails only after
        MAX_RESENDS resends in a row that brought nothing back."""
        job = await self._store_if_absent(event_id, results)
        if job is not None:
            return job, len({r.frame for r in results})
        stored = 0
        for result in results:
            if (written := await self._store_if_absent(event_id, [result])) is not None:
                job, stored = written, stored + 1
        if job is None:  # nothing new: still hand back the job, so that its completion is checked
            doc = await transient(self.collection.find_one)({"_id": event_id, **PROCESSING})
            job = RunnerPrediction.model_validate(doc) if doc else None
        return job, stored

    @transient
    async def _store_if_absent(self, event_id: str, results: list[InferenceResult]) -> RunnerPrediction | None:
        """One conditional write: all these frames, or none if one of them is stored or the job is over."""
        fields = {f"frame_results.{r.frame}": [obj.to_mongo() for obj in r.objects] for r in reversed(results)}
        doc = await self.collection.find_one_and_update(
            {"_id": event_id, **PROCESSING, **{field: {"$exists": False} for field in fields}},
            {"$set": {**fields, "updated_at": utcnow(), "resends": 0}, "$inc": {"received_frames": len(fields)}},
            return_document=ReturnDocument.AFTER,
        )
        return RunnerPrediction.model_validate(doc) if doc else None

    @transient
    async def complete(self, job: RunnerPrediction) -> bool:
        """processing -> predictable with the prediction sorted by frame; True for the one caller that won."""
        prediction = [frame.to_mongo() for frame in job.sorted_prediction()]
        outcome = await self.collection.update_one(
            {"_id": job.id, **PROCESSING},
            {"$set": {"status": RunnerStatus.PREDICTABLE.value, "prediction": prediction, "completed_at": utcnow()}},
        )
        return outcome.modified_count == 1

    @transient
    async def stalled(self, quiet_for: timedelta) -> list[RunnerPrediction]:
        """Jobs still processing with no progress for `quiet_for`."""
        docs = self.collection.find({**PROCESSING, "updated_at": {"$lt": utcnow() - quiet_for}})
        return [RunnerPrediction.model_validate(doc) async for doc in docs]

    @transient
    async def claim_resend(self, job: RunnerPrediction) -> RunnerPrediction | None:
        """Take a stalled job for a resend; None if another runner took it or it moved on meanwhile."""
        doc = await self.collection.find_one_and_update(
            {"_id": job.id, **PROCESSING, "updated_at": job.updated_at},
            {"$set": {"updated_at": utcnow()}, "$inc": {"resends": 1}},
            return_document=ReturnDocument.AFTER,
        )
        return RunnerPrediction.model_validate(doc) if doc else None

    @transient
    async def fail(self, event_id: str, reason: str) -> bool:
        outcome = await self.collection.update_one(
            {"_id": event_id, **PROCESSING},
            {"$set": {"status": RunnerStatus.FAILED.value, "error": reason, "failed_at": utcnow()}},
        )
        return outcome.modified_count == 1
