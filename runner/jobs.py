"""The runner's bookkeeping in `runner_db`: every write is conditional or idempotent.

A job is one small document in `runner_predictions`; each frame's result is a document of its own in
`runner_frames` (first write wins, by `_id`), so no document grows with the length of the video.
"""

from collections import Counter
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from events import runnerstate
from events.contracts import FrameDocument, InferenceResult, JobOptions, ModelRef, RunnerPrediction, utcnow
from events.log import get_logger
from events.retry import transient
from events.statuses import RunnerStatus
from runner.frames import VideoInfo

PROCESSING = runnerstate.WHILE_PROCESSING
DUPLICATE_KEY = 11000
log = get_logger(__name__)


def _job(doc: dict | None) -> RunnerPrediction | None:
    return RunnerPrediction.model_validate(doc) if doc else None


class Jobs:
    def __init__(self, collection: AsyncCollection, frames: AsyncCollection) -> None:
        self.collection = collection
        self.frames = frames

    @transient
    async def create(
        self, event_id: str, bucket: str, key: str, model: ModelRef | None = None, options: JobOptions | None = None
    ) -> bool:
        """Start tracking a job; False if it already exists (a redelivered outbox event)."""
        try:
            job = RunnerPrediction(id=event_id, bucket=bucket, object=key, model=model, options=options,
                                   updated_at=utcnow())  # fmt: skip
            await self.collection.insert_one(job.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    @transient
    async def get(self, event_id: str) -> RunnerPrediction | None:
        return _job(await self.collection.find_one({"_id": event_id}))

    @transient
    async def set_total(self, event_id: str, total_frames: int) -> RunnerPrediction | None:
        doc = await self.collection.find_one_and_update(
            {"_id": event_id, **PROCESSING},
            {"$set": {"total_frames": total_frames, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return _job(doc)

    @transient
    async def expect(self, event_id: str, info: VideoInfo, stride: int) -> None:
        """How many frames the job should have, estimated before they are read (for its progress), the
        video's frame rate (a player maps its time to frames with it), the stride, and the frame size."""
        found = {"frames_expected": info.sampled(stride), "fps": info.fps, "stride": stride,
                 "width": info.width, "height": info.height}  # fmt: skip
        await self.collection.update_one({"_id": event_id, **PROCESSING}, {"$set": found})

    @transient
    async def touch(self, event_id: str, tasks: dict[int, int]) -> None:
        """The job is being fanned out: its clock starts again, and the offsets of its last frame
        messages so far are kept (the stall check waits until the inference workers are past them)."""
        await self.collection.update_one(
            {"_id": event_id, **PROCESSING},
            {
                "$set": {"updated_at": utcnow()},
                "$max": {f"tasks.{partition}": offset for partition, offset in tasks.items()},
            },
        )

    async def record(self, batches: dict[str, list[InferenceResult]]) -> dict[str, tuple[RunnerPrediction | None, int]]:
        """Store the frames of a batch's jobs, each at most once (first write wins). Returns, per job, the
        job as it stands after the writes and how many of its frames were new; (None, 0) for a job over
        or unknown.

        The jobs still processing are read in one query and all their frame documents inserted in one
        write, whatever the number of jobs the batch holds; then each job's counter moves on by what was
        new, so a crash in between leaves a counter short, never long; a job whose frames included
        duplicates (a redelivery) has them counted again to repair it. Progress resets the resend count:
        a job fails only after MAX_RESENDS resends in a row that brought nothing back."""
        live = await self._processing(list(batches))
        owners, documents = [], []
        for event_id in live:
            for result in {r.frame: r for r in batches[event_id]}.values():
                owners.append(event_id)
                documents.append(FrameDocument.of(result).to_mongo())
        refused = await self._insert_new(documents) if documents else set()
        new = Counter(owner for index, owner in enumerate(owners) if index not in refused)
        offered = Counter(owners)
        recorded: dict[str, tuple[RunnerPrediction | None, int]] = {event_id: (None, 0) for event_id in batches}
        for event_id in live:
            job = None
            if stored := new[event_id]:
                job = _job(
                    await transient(self.collection.find_one_and_update)(
                        {"_id": event_id, **PROCESSING},
                        {"$inc": {"received_frames": stored}, "$set": {"updated_at": utcnow(), "resends": 0}},
                        return_document=ReturnDocument.AFTER,
                    )
                )
            if stored < offered[event_id]:
                job = await self.recount(event_id)
            recorded[event_id] = (job, stored)
        return recorded

    @transient
    async def _processing(self, event_ids: list[str]) -> list[str]:
        """Those of these jobs that are still processing, in the given order."""
        found = {
            doc["_id"] async for doc in self.collection.find({"_id": {"$in": event_ids}, **PROCESSING}, {"_id": 1})
        }
        return [event_id for event_id in event_ids if event_id in found]

    @transient
    async def _insert_new(self, documents: list[dict]) -> set[int]:
        """Insert what is not there yet; returns the indexes of the documents that were there already.
        Only duplicates are tolerated."""
        try:
            await self.frames.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            return {e["index"] for e in errors}
        return set()

    @transient
    async def recount(self, event_id: str) -> RunnerPrediction | None:
        """Set `received_frames` from the frame documents (never lower: counts only grow)."""
        count = await self.frames.count_documents(FrameDocument.range_of(event_id))
        doc = await self.collection.find_one_and_update(
            {"_id": event_id, **PROCESSING},
            {"$max": {"received_frames": count}},
            return_document=ReturnDocument.AFTER,
        )
        return _job(doc)

    async def stored_frames(self, event_id: str) -> frozenset[int]:
        """The frame numbers of a job whose results are stored (for a resend of the missing ones)."""
        cursor = self.frames.find(FrameDocument.range_of(event_id), {"frame": 1, "_id": 0})
        return frozenset([doc["frame"] async for doc in cursor])

    @transient
    async def complete(self, job: RunnerPrediction) -> bool:
        """processing -> predictable, if every frame's document is there; True for the one caller that
        won. The frames stay where they are: the S3 relay streams them into the detection file.

        The counter alone is not trusted: a database that restarted can lose writes it had acknowledged
        (frame documents) and keep later ones (the counter's increment). Then the counter goes back to
        what is stored, the job stays in processing, and the stall check sends the missing frames again."""
        stored = await self.frames.count_documents(FrameDocument.range_of(job.id))
        if job.total_frames is None or stored < job.total_frames:
            await self.collection.update_one({"_id": job.id, **PROCESSING}, {"$set": {"received_frames": stored}})
            log.warning("frame results lost by the database, counted again", stored=stored,
                        expected=job.total_frames, lost_results=1)  # fmt: skip
            return False
        move = runnerstate.Move.COMPLETE
        outcome = await self.collection.update_one(
            {"_id": job.id, **runnerstate.where(move)},
            {"$set": {"status": runnerstate.status_after(RunnerStatus.PROCESSING, move), "completed_at": utcnow()}},
        )
        return outcome.modified_count == 1

    @transient
    async def quiet(self, quiet_for: timedelta) -> list[RunnerPrediction]:
        """Jobs still processing with no progress for `quiet_for`: waiting in a queue, or stalled."""
        docs = self.collection.find({**PROCESSING, "updated_at": {"$lt": utcnow() - quiet_for}})
        return [RunnerPrediction.model_validate(doc) async for doc in docs]

    @transient
    async def processing_among(self, event_ids: list[str]) -> set[str]:
        """Those of the jobs that are still processing."""
        docs = self.collection.find({"_id": {"$in": event_ids}, **PROCESSING}, {"_id": 1})
        return {doc["_id"] async for doc in docs}

    @transient
    async def claim_resend(self, job: RunnerPrediction, counted: bool = True) -> RunnerPrediction | None:
        """Take a stalled job for a resend; None if another runner took it or it moved on meanwhile.
        `counted`: it counts towards MAX_RESENDS (not when the broker lost the frames).
        The offsets of its frame messages are forgotten: the resend records its own. Kept, they would
        hide the resent frames when they are lower (a broker that lost its log numbers from 0 again),
        and a resend still queued would be taken for lost."""
        doc = await self.collection.find_one_and_update(
            {"_id": job.id, **PROCESSING, "updated_at": job.updated_at},
            {"$set": {"updated_at": utcnow()}, "$inc": {"resends": int(counted)}, "$unset": {"tasks": ""}},
            return_document=ReturnDocument.AFTER,
        )
        return _job(doc)

    @transient
    async def forget(self, event_id: str) -> None:
        """A job deleted by the API: its bookkeeping and frame results go (results still on their way
        find no job and are ignored)."""
        await self.collection.delete_one({"_id": event_id})
        await self.frames.delete_many(FrameDocument.range_of(event_id))

    @transient
    async def fail(self, event_id: str, reason: str) -> bool:
        move = runnerstate.Move.FAIL
        outcome = await self.collection.update_one(
            {"_id": event_id, **runnerstate.where(move)},
            {"$set": {"status": runnerstate.status_after(RunnerStatus.PROCESSING, move), "error": reason,
                      "failed_at": utcnow()}},
        )  # fmt: skip
        return outcome.modified_count == 1
