"""The S3 relay against real SecantusDB: predictable jobs become detection files, written once."""

import asyncio
import functools
import itertools
import shutil
import time
import uuid

import relays.s3
from events import topics
from events.clients import group_offsets, kafka_producer, object_store
from events.contracts import (
    FRAMES,
    PREDICTIONS,
    DetectedObject,
    DetectionFile,
    FailureFile,
    FrameDocument,
    FramePrediction,
    JobEvent,
    JobEventType,
    JobOptions,
    RunnerPrediction,
    StorageLocation,
    detection_key,
    failure_key,
    utcnow,
)
from events.statuses import RunnerStatus
from relays.follow import Relay, job_event_publisher
from tests.conftest import eventually, read_topic, serving, sweep_done

CAR = DetectedObject(class_name="car", box=[1, 2, 3, 4], conf=0.9)


class Published(list):
    """The job events a relay published, in order (the Kafka path is tested with real Tansu below)."""

    async def __call__(self, event: JobEvent) -> None:
        self.append(event)

    def of(self, job: RunnerPrediction) -> list[JobEvent]:
        return [event for event in self if event.event_id == job.id]


def s3_relay(db, store, settings, published: Published | None = None) -> Relay:
    publish = published if published is not None else Published()
    return relays.s3.build(db, store, publish, relays.s3.Throttle(publish), settings)


def finished_job(bucket: str = "videos") -> RunnerPrediction:
    return RunnerPrediction(id=str(uuid.uuid4()), bucket=bucket, total_frames=2, received_frames=2)


async def with_frames(db, *jobs: RunnerPrediction) -> None:
    """Store the jobs and their two frames (frame 5 before frame 0: the file must sort them)."""
    await db[PREDICTIONS].insert_many([job.to_mongo() for job in jobs])
    frames = [FrameDocument(id=FrameDocument.key(job.id, frame), job=job.id, frame=frame, objects=objects)
              for job in jobs for frame, objects in ((5, [CAR]), (0, []))]  # fmt: skip
    await db[FRAMES].insert_many([frame.to_mongo() for frame in frames])


async def no_frames_left(db, job: RunnerPrediction) -> bool:
    return await db[FRAMES].count_documents(FrameDocument.range_of(job.id)) == 0


async def test_predictable_jobs_are_written_once_and_marked_ready(settings, mongo):
    db, store = mongo[settings.runner_db], object_store(settings)
    await store.ensure_bucket("videos")
    swept, streamed, other = finished_job(), finished_job(), finished_job()
    swept.status = RunnerStatus.PREDICTABLE
    await with_frames(db, swept, streamed, other)
    published = Published()
    async with serving(s3_relay(db, store, settings, published)) as relay:
        await sweep_done(relay)
        await db[PREDICTIONS].update_one({"_id": streamed.id}, {"$set": {"status": "predictable"}})
        for job in (swept, streamed):
            await eventually(lambda job=job: db[PREDICTIONS].find_one({"_id": job.id, "status": "ready"}))
        assert relay.stats.swept == 3  # the predictable job to write; the processing ones for their progress
    for job in (swept, streamed):
        doc = await db[PREDICTIONS].find_one({"_id": job.id})
        assert doc["output_s3"] == {"bucket": "videos", "object": f"detection/{job.id}.json"}
        assert doc["ready_at"] is not None
        result = DetectionFile.from_bytes(await store.get_bytes("videos", detection_key(job.id)) or b"")
        assert result.prediction == [FramePrediction(frame=0, objects=[]), FramePrediction(frame=5, objects=[CAR])]
        assert result.total_frames == 2
        assert await db[FRAMES].count_documents(FrameDocument.range_of(job.id)) == 0  # in the file now
    assert await store.get_bytes("videos", detection_key(other.id)) is None  # still processing
    assert (await db[PREDICTIONS].find_one({"_id": other.id}))["status"] == "processing"
    assert await db[FRAMES].count_documents(FrameDocument.range_of(other.id)) == 2
    for job in (swept, streamed):  # `ready` once the file exists, with the exact frame count
        (ready,) = [e for e in published.of(job) if e.type == JobEventType.READY]
        assert ready.frames_total == ready.frames_done == 2
    assert [e.type for e in published.of(other)] == [JobEventType.PROGRESS]  # still processing: its progress


async def test_progress_reaches_job_events_at_most_once_a_second_and_the_last_one_too(settings, mongo, kafka_topics):
    db, store = mongo[settings.runner_db], object_store(settings)
    job = RunnerPrediction(id=str(uuid.uuid4()), bucket="videos")
    published, handed = Published(), list[tuple[float, JobEvent]]()  # each event with the time it was handed over
    async with kafka_producer(settings) as producer:
        to_kafka = job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))

        async def publish(event: JobEvent) -> None:
            handed.append((time.monotonic(), event))
            await to_kafka(event)
            await published(event)

        throttle = relays.s3.Throttle(publish)
        relay = relays.s3.build(db, store, publish, throttle, settings)
        async with serving(relay), serving(throttle):
            await db[PREDICTIONS].insert_one(job.to_mongo())  # taken by the runner: started, no count yet
            await db[PREDICTIONS].update_one({"_id": job.id}, {"$set": {"frames_expected": 30}})  # video opened
            await eventually(lambda: asyncio.sleep(0, any(e.frames_total for e in published.of(job))))
            for done in range(1, 31):  # 30 results over about 1.5 s
                await db[PREDICTIONS].update_one({"_id": job.id}, {"$set": {"received_frames": done}})
                await asyncio.sleep(0.05)
            # the last change fell inside an interval: it is held back, then published
            await eventually(lambda: asyncio.sleep(0, published.of(job)[-1].frames_done == 30))
    events = published.of(job)
    starts = [e for e in events if e.type == JobEventType.STARTED]
    assert starts == events[: len(starts)] and len(starts) <= 2  # the count may already be there at once
    assert starts[-1].frames_total == 30 and starts[-1].frames_done == 0
    progress = events[len(starts) :]
    assert {e.type for e in progress} == {JobEventType.PROGRESS}
    # paced by the relay's clock, not the test's: the change stream may deliver the 30 changes late on a busy machine
    assert 1 <= len(progress) <= 10
    times = [at for at, e in handed if e.event_id == job.id and e.type == JobEventType.PROGRESS]
    assert all(later - earlier >= relays.s3.PROGRESS_INTERVAL_S * 0.99 for earlier, later in itertools.pairwise(times))
    assert [e.frames_done for e in progress] == sorted(e.frames_done for e in progress)
    on_kafka = [JobEvent.from_bytes(m.value) for m in await read_topic(settings, topics.JOB_EVENTS, len(events))]
    assert [(e.type, e.frames_done) for e in on_kafka] == [(e.type, e.frames_done) for e in events]


async def test_an_outcome_event_is_watched_until_read_and_published_again_if_the_broker_lost_it(
    settings, mongo, kafka_topics
):
    db, store = mongo[settings.runner_db], object_store(settings)
    await store.ensure_bucket("videos")
    plain, rendered = finished_job(), finished_job()
    rendered.options, rendered.object = JobOptions(render=True), "input/video.mp4"
    plain.status = rendered.status = RunnerStatus.PREDICTABLE
    await with_frames(db, plain, rendered)
    async with (
        kafka_producer(settings) as producer,
        group_offsets(settings, topics.JOB_EVENTS, topics.PROJECTOR_GROUP) as projector,
        group_offsets(settings, topics.JOB_EVENTS, topics.RENDER_GROUP) as render,
    ):
        publish = job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))
        async with serving(relays.s3.build(db, store, publish, relays.s3.Throttle(publish), settings)):
            for job in (plain, rendered):
                await eventually(lambda job=job: db[PREDICTIONS].find_one({"_id": job.id, "status": "ready"}))
        lost = functools.partial(relays.s3.resend_lost_outcomes, db[PREDICTIONS], publish, projector, render)

        async def watched(job: RunnerPrediction) -> dict[str, int] | None:
            doc = await db[PREDICTIONS].find_one({"_id": job.id})
            return doc.get("outcome_sent_to")

        first = await watched(rendered)
        assert first and await watched(plain)
        assert await lost() == 0  # nobody has read them yet: queued, never taken for lost
        await read_topic(settings, topics.JOB_EVENTS, 2, group=topics.PROJECTOR_GROUP)  # as the API's projector
        assert await lost() == 0
        assert await watched(plain) is None  # read by the projector: no longer watched
        assert await watched(rendered) == first  # a rendering: the render workers have not read it yet
        # the broker restarted empty: the topic no longer holds the offset the event went to
        (partition, offset), ends = next(iter(first.items())), await projector.ends()
        assert offset < ends[int(partition)]
        await db[PREDICTIONS].update_one(
            {"_id": rendered.id}, {"$set": {"outcome_sent_to": {partition: ends[int(partition)] + 100}}}
        )
        assert await lost() == 1
        again = await watched(rendered)
        assert again and again[partition] >= ends[int(partition)]  # where it went this time, watched again
        assert await lost() == 0
        # each group reads what it has not yet: the projector the event published again, the render workers all three
        for group, unread in ((topics.PROJECTOR_GROUP, 1), (topics.RENDER_GROUP, 3)):
            await read_topic(settings, topics.JOB_EVENTS, unread, group=group)
        assert await lost() == 0
        assert await watched(rendered) is None  # read by every group it is for: nothing is watched any more
    on_kafka = [JobEvent.from_bytes(m.value) for m in await read_topic(settings, topics.JOB_EVENTS, 3)]
    of_rendered = [e for e in on_kafka if e.event_id == rendered.id]  # one job's events: one partition, in order
    assert [e.type for e in of_rendered] == [JobEventType.READY] * 2
    resent = of_rendered[-1]
    assert resent.render and resent.video == StorageLocation(bucket="videos", object="input/video.mp4")
    assert resent.frames_total == resent.frames_done == 2


async def test_a_replayed_job_does_not_rewrite_its_detection_file(settings, mongo):
    db, store = mongo[settings.runner_db], object_store(settings)
    await store.ensure_bucket("videos")
    job = finished_job()
    job.status = RunnerStatus.PREDICTABLE
    await with_frames(db, job)
    async with serving(s3_relay(db, store, settings)):
        await eventually(lambda: db[PREDICTIONS].find_one({"_id": job.id, "status": "ready"}))
        written = await store.modified_at("videos", detection_key(job.id))
        # a crash after the write but before `ready` would leave the job predictable: replay that
        await db[PREDICTIONS].update_one({"_id": job.id}, {"$set": {"status": "predictable"}})
        await eventually(lambda: db[PREDICTIONS].find_one({"_id": job.id, "status": "ready"}))
    assert await store.modified_at("videos", detection_key(job.id)) == written


async def test_a_failed_job_gets_its_reason_written_once(settings, mongo):
    db, store = mongo[settings.runner_db], object_store(settings)
    await store.ensure_bucket("videos")
    job = finished_job()
    await with_frames(db, job)  # frames stored before the job failed
    published = Published()
    async with serving(s3_relay(db, store, settings, published)) as relay:
        await sweep_done(relay)
        await db[PREDICTIONS].update_one(
            {"_id": job.id}, {"$set": {"status": "failed", "error": "no decodable frames", "failed_at": utcnow()}}
        )
        doc = await eventually(lambda: db[PREDICTIONS].find_one({"_id": job.id, "output_s3": {"$exists": True}}))
        await eventually(lambda: no_frames_left(db, job))  # a failed job leaves no frame documents behind
    assert doc["status"] == "failed"
    assert doc["output_s3"] == {"bucket": "videos", "object": f"failed/{job.id}.json"}
    failure = FailureFile.from_bytes(await store.get_bytes("videos", failure_key(job.id)) or b"")
    assert failure.error == "no decodable frames" and failure.event_id == job.id
    assert await store.get_bytes("videos", detection_key(job.id)) is None
    (failed,) = [e for e in published.of(job) if e.type == JobEventType.FAILED]
    assert failed.error == "no decodable frames"


async def test_a_job_whose_bucket_is_gone_fails_with_the_reason_and_the_relay_moves_on(settings, mongo):
    db, store = mongo[settings.runner_db], object_store(settings)
    for bucket in ("videos", "doomed"):
        await store.ensure_bucket(bucket)
    orphan, healthy = finished_job("doomed"), finished_job("videos")
    await with_frames(db, orphan, healthy)
    shutil.rmtree(settings.storage_dir / "doomed")  # deleted after the upload
    published = Published()
    async with serving(s3_relay(db, store, settings, published)) as relay:
        await sweep_done(relay)
        for job in (orphan, healthy):  # the broken job first: the relay must not stop at it
            await db[PREDICTIONS].update_one({"_id": job.id}, {"$set": {"status": "predictable"}})
        await eventually(lambda: db[PREDICTIONS].find_one({"_id": healthy.id, "status": "ready"}))
        failed = await eventually(lambda: db[PREDICTIONS].find_one({"_id": orphan.id, "export_error": {"$exists": 1}}))
        await eventually(lambda: no_frames_left(db, orphan))
        changes = relay.stats.changes
    assert failed["status"] == "failed" and "doomed" in failed["error"] and "does not exist" in failed["error"]
    assert changes >= 2  # the relay went on after the failure (it would have exited otherwise)
    assert DetectionFile.from_bytes(await store.get_bytes("videos", detection_key(healthy.id)) or b"").total_frames == 2
    assert [e.type for e in published.of(orphan) if e.type != JobEventType.PROGRESS] == [JobEventType.FAILED]
    assert "doomed" in published.of(orphan)[-1].error
