"""S3 relay: the runner's jobs in `runner_db.runner_predictions` -> object storage and `job_events`.

`processing` -> `started` (as soon as the runner takes the job, and again with its frame count) and
`progress`, at most one per job every PROGRESS_INTERVAL_S (the last one is never dropped, only
delayed). `predictable` -> `detection/{id}.json`, streamed from the job's frame documents in frame
order through the job's tracker, summary and zones (`analytics.analysis`), then the `ready` event (so
the API never hears of a result before it exists), then `predictable -> ready` with where the event
went; `failed` -> `failed/{id}.json` (why it failed) and the `failed` event, then `output_s3` is set
on the failed job. Either way the job's frame documents are deleted once it is settled, and its
outcome event is watched until the API's projector (and, for a rendering, the render workers) have
read it: one that the broker lost is published again. Each object is written only if absent, so a
replayed change writes nothing twice, and a replayed event is a duplicate the projector ignores.

A storage error that no retry can fix (bucket deleted, access denied, invalid key) fails that one job
with the reason, recorded as `export_error`, and the relay moves on; transient errors are retried
and, if they last, stop the relay before its token moves on.
"""

import asyncio
import functools
import tempfile
import time
from io import BytesIO
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from analytics.analysis import Analysis
from events import detection_file, inflight, runnerstate, topics
from events.clients import GroupOffsets, ensure_topics, group_offsets, kafka_producer, mongo_client, object_store
from events.contracts import (
    CHECKPOINTS,
    FRAMES,
    PREDICTIONS,
    DetectionHeader,
    FailureFile,
    FrameDocument,
    JobEvent,
    JobEventType,
    RunnerPrediction,
    StorageLocation,
    detection_key,
    failure_key,
    utcnow,
)
from events.crash import crash_point
from events.health import health_app
from events.log import get_logger
from events.retry import transient
from events.runtime import http_server, wait_or_stop
from events.settings import Settings
from events.statuses import RunnerStatus
from events.storage import ObjectStore, PermanentStorageError
from relays.checkpoints import MongoTokenStore
from relays.follow import PublishEvent, Relay, every, job_event_publisher

log = get_logger(__name__)
NAME = "s3-relay"
PROCESSING = RunnerStatus.PROCESSING.value
PREDICTABLE, FAILED = RunnerStatus.PREDICTABLE.value, RunnerStatus.FAILED.value
OUTCOMES = [status.value for status in runnerstate.OUTCOMES]
PROGRESS_FIELDS = ("received_frames", "total_frames", "frames_expected")
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": "update", "updateDescription.updatedFields.status": {"$in": OUTCOMES}},
                *({"operationType": "update", f"updateDescription.updatedFields.{name}": {"$exists": True}}
                  for name in PROGRESS_FIELDS),
                {"operationType": {"$in": ["insert", "replace"]},
                 "fullDocument.status": {"$in": [PROCESSING, *OUTCOMES]}},
            ]
        }
    }
]  # fmt: skip
# Jobs whose progress may be news, and jobs whose outcome is not in storage yet and could still be.
SOURCE_FILTER = {
    "$or": [
        {"status": {"$in": [PROCESSING, PREDICTABLE]}},
        {"status": FAILED, "output_s3": {"$exists": False}, "export_error": {"$exists": False}},
    ]
}
SPOOL_BYTES = 8 * 1024 * 1024  # a detection file up to this size is assembled in memory, larger on disk
PROGRESS_INTERVAL_S = 1.0
FLUSH_INTERVAL_S = 0.2
LOST_CHECK_INTERVAL_S = 2.0  # soon after a broker restarted empty, before its new log grows past the old offsets


def progress_event(job: RunnerPrediction) -> JobEvent:
    """`started` for a job with no frame back yet (again once its frame count is known); `progress` after."""
    total = job.total_frames if job.total_frames is not None else job.frames_expected
    kind = JobEventType.PROGRESS if job.received_frames else JobEventType.STARTED
    return JobEvent(event_id=job.id, type=kind, frames_total=total, frames_done=job.received_frames)


def outcome_event(job: RunnerPrediction, error: str | None = None) -> JobEvent:
    """`ready` for a written result; `failed` with the runner's reason, or `error` (storage refused it)."""
    if job.status in (RunnerStatus.PREDICTABLE, RunnerStatus.READY) and error is None:
        render = bool(job.options and job.options.render) or None
        video = StorageLocation(bucket=job.bucket, object=job.object) if render and job.object else None
        return JobEvent(event_id=job.id, type=JobEventType.READY, frames_total=job.total_frames,
                        frames_done=job.received_frames, render=render, video=video)  # fmt: skip
    return JobEvent(event_id=job.id, type=JobEventType.FAILED, error=error or job.error or "unknown error")


class Throttle:
    """At most one progress event per job per interval, and none that repeats the last one; a change
    inside the interval is held back and published when it ends (by `flush`), so the latest progress
    always goes out. Memory: the jobs that changed within the last interval."""

    def __init__(self, publish: PublishEvent, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.publish, self.interval = publish, interval
        self.sent: dict[str, tuple[float, tuple]] = {}  # job -> when, and what, was last published
        self.held: dict[str, JobEvent] = {}

    def due(self, job: str, now: float) -> bool:
        return job not in self.sent or now - self.sent[job][0] >= self.interval

    async def _send(self, event: JobEvent, now: float) -> None:
        what = (event.type, event.frames_total, event.frames_done)
        if self.sent.get(event.event_id, (0, None))[1] != what:
            await self.publish(event)
            self.sent[event.event_id] = (now, what)

    async def offer(self, event: JobEvent) -> None:
        now = time.monotonic()
        if event.type == JobEventType.STARTED or self.due(event.event_id, now):
            self.held.pop(event.event_id, None)
            await self._send(event, now)
        else:
            self.held[event.event_id] = event

    async def flush(self) -> None:
        now = time.monotonic()
        for job in list(self.held):  # a publish lets others run: a job may be forgotten or offered anew meanwhile
            if self.due(job, now) and (event := self.held.pop(job, None)) is not None:
                await self._send(event.model_copy(update={"at": utcnow()}), now)
        self.sent = {job: sent for job, sent in self.sent.items() if now - sent[0] < self.interval or job in self.held}

    def forget(self, job: str) -> None:
        self.sent.pop(job, None)
        self.held.pop(job, None)

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, FLUSH_INTERVAL_S):
            await self.flush()


def exporter(
    predictions: AsyncCollection, frames: AsyncCollection, store: ObjectStore, publish: PublishEvent, throttle: Throttle
):
    @transient
    async def mark_exported(job: RunnerPrediction, location: StorageLocation, sent: dict[str, Any]) -> None:
        move = runnerstate.Move.EXPORT
        update: dict[str, Any] = {"status": runnerstate.status_after(job.status, move),
                                  "output_s3": location.to_mongo(), **sent}  # fmt: skip
        condition = runnerstate.where(move, job.status)
        if job.status == RunnerStatus.PREDICTABLE:
            update["ready_at"] = utcnow()
        else:  # a failure's outcome is recorded once
            condition["output_s3"] = {"$exists": False}
        await predictions.update_one({"_id": job.id, **condition}, {"$set": update})

    @transient
    async def mark_unexportable(job: RunnerPrediction, error: PermanentStorageError, sent: dict[str, Any]) -> None:
        """The outcome cannot be written: the job fails with the reason, and is not tried again."""
        reason, move = f"the job's outcome could not be written to storage: {error}", runnerstate.Move.REFUSE
        await predictions.update_one(
            {"_id": job.id, **runnerstate.where(move), "output_s3": {"$exists": False}},
            {"$set": {"status": runnerstate.status_after(job.status, move), "export_error": reason,
                      "error": job.error or reason, "failed_at": job.failed_at or utcnow(), **sent}},
        )  # fmt: skip

    async def sorted_frames(job_id: str):
        cursor = frames.find(FrameDocument.range_of(job_id), {"_id": 0, "frame": 1, "objects": 1, "error": 1})
        async for doc in cursor.sort("_id", 1).batch_size(500):
            yield doc

    @transient
    async def write_detection(job: RunnerPrediction, location: StorageLocation) -> bool:
        """Stream the frame documents into a spooled file, then upload it: memory stays flat."""
        analysis = Analysis(job.options, job.fps, job.stride, job.total_frames)
        header = DetectionHeader(event_id=job.id, total_frames=job.total_frames or 0, fps=job.fps, model=job.model,
                                 stride=job.stride, width=job.width, height=job.height, tracked=analysis.tracked,
                                 created_at=job.created_at, completed_at=utcnow())  # fmt: skip
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out:
            frames = analysis.frames(sorted_frames(job.id), batch=500)
            frames_written = await detection_file.write(out, header.model_dump(mode="json"), frames, analysis.tail)
            size = out.tell()
            out.seek(0)
            written = await store.put_if_absent(location.bucket, location.object, out, "application/json")
        log.info("detection file assembled", frames=frames_written, bytes=size)
        return written

    @transient
    async def write_failure(job: RunnerPrediction, location: StorageLocation) -> bool:
        failure = FailureFile(event_id=job.id, error=job.error or "unknown error", failed_at=job.failed_at or utcnow())
        return await store.put_if_absent(location.bucket, location.object, BytesIO(failure.to_bytes()),
                                         "application/json")  # fmt: skip

    async def export(doc: dict[str, Any]) -> None:
        job = RunnerPrediction.model_validate(doc)
        if job.status == RunnerStatus.PROCESSING:
            await throttle.offer(progress_event(job))
            return
        throttle.forget(job.id)
        predictable = job.status == RunnerStatus.PREDICTABLE
        location = StorageLocation(bucket=job.bucket, object=(detection_key if predictable else failure_key)(job.id))
        with structlog.contextvars.bound_contextvars(event_id=job.id):
            try:
                # written once: a replayed change (after a crash) finds the object there and writes nothing
                if await (write_detection if predictable else write_failure)(job, location):
                    log.info("job outcome written", status=job.status.value, object=location.object)
                    crash_point("after_side_effect")
                else:
                    log.info("job outcome already present", object=location.object, duplicates=1)
                sent = outcome_sent(await publish(outcome_event(job)))
                await mark_exported(job, location, sent)
            except PermanentStorageError as error:
                log.error("job outcome cannot be written, job failed", error=str(error), export_errors=1)
                reason = f"the job's outcome could not be written to storage: {error}"
                sent = outcome_sent(await publish(outcome_event(job, job.error or reason)))
                await mark_unexportable(job, error, sent)
            # the job is settled, whatever its outcome: its frame documents are not needed any more
            await transient(frames.delete_many)(FrameDocument.range_of(job.id))

    return export


def outcome_sent(sent_to: dict[str, int] | None) -> dict[str, Any]:
    """The fields that record where a job's outcome event went, watched until it is read (nothing when
    the publisher does not say)."""
    return {"outcome_sent_to": sent_to, "outcome_sent_at": utcnow()} if sent_to else {}


async def resend_lost_outcomes(
    predictions: AsyncCollection, publish: PublishEvent, projector: GroupOffsets, render: GroupOffsets
) -> int:
    """Publish again the outcome events (`ready`, `failed`) that the broker no longer holds (it restarted
    empty before the API's projector, or the render workers for a rendering, had read them): without
    them the job would stay unfinished in the read model and its webhook would never leave. An event is
    watched until every group it is for has committed past it; while one has not, it is queued (an API
    that is down only delays it). Returns how many were sent again."""
    unread = {"outcome_sent_at": {"$lt": utcnow()}}  # published before the offsets below are read
    if await predictions.find_one(unread, {"_id": 1}) is None:
        return 0  # the usual case: every outcome read, nothing to ask the broker
    # read before the query, and the query asks for nothing published since: no event is taken for
    # lost because it was sent after the topic's end was read
    by_projector, by_render = await projector.positions(), await render.positions()
    sent_again = 0
    async for doc in predictions.find(unread):
        job = RunnerPrediction.model_validate(doc)
        event, sent_to = outcome_event(job), job.outcome_sent_to or {}
        readers = [by_projector, by_render] if event.render else [by_projector]
        places = {inflight.where(sent_to, *positions) for positions in readers}
        watched = {"_id": job.id, "outcome_sent_at": job.outcome_sent_at}
        if inflight.Where.LOST in places:
            with structlog.contextvars.bound_contextvars(event_id=job.id):
                if sent := outcome_sent(await publish(event)):
                    await predictions.update_one(watched, {"$set": sent})
                log.warning("job outcome event lost, sent again", type=event.type.value, redeliveries=1)
            sent_again += 1
        elif places == {inflight.Where.TAKEN}:
            await predictions.update_one(watched, {"$unset": {"outcome_sent_to": "", "outcome_sent_at": ""}})
    return sent_again


def build(
    db: AsyncDatabase, store: ObjectStore, publish: PublishEvent, throttle: Throttle, settings: Settings
) -> Relay:
    return Relay(
        name=NAME,
        collection=db[PREDICTIONS],
        pipeline=PIPELINE,
        source_filter=SOURCE_FILTER,
        handle=exporter(db[PREDICTIONS], db[FRAMES], store, publish, throttle),
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    async with (
        mongo_client(**settings.mongo(runner=True)) as client,
        kafka_producer(settings) as producer,
        group_offsets(settings, topics.JOB_EVENTS, topics.PROJECTOR_GROUP) as projector,
        group_offsets(settings, topics.JOB_EVENTS, topics.RENDER_GROUP) as render,
    ):
        publish = job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))
        throttle = Throttle(publish)
        db = client[settings.runner_db]
        relay = build(db, object_store(settings), publish, throttle, settings)
        lost = functools.partial(resend_lost_outcomes, db[PREDICTIONS], publish, projector, render)
        async with (
            http_server(health_app(relay.name, relay.report), settings.bind_host, settings.s3_relay_port),
            asyncio.TaskGroup() as group,
        ):
            group.create_task(relay.run(stop))
            group.create_task(throttle.run(stop))
            group.create_task(every(stop, LOST_CHECK_INTERVAL_S, lost, relay.stats))
