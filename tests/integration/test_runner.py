"""The runner against real SecantusDB, Tansu, a real video and a real process pool."""

import asyncio
import multiprocessing
import resource
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from events import topics
from events.clients import commit, group_offsets, kafka_consumer, kafka_producer, object_store, records
from events.contracts import (
    FRAMES,
    PREDICTIONS,
    DetectedObject,
    InferenceResult,
    InferenceTask,
    OutboxEvent,
    OutboxPayload,
    input_key,
    utcnow,
)
from events.settings import Settings
from runner.jobs import Jobs
from runner.service import Runner
from tests import hostile
from tests.conftest import eventually, read_topic
from tests.servers import bikes_video

BIKES_SAMPLED = 50  # bikes.mp4 has 250 frames; every 5th is sampled


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture
async def make_runner(settings, mongo, kafka_topics, pool) -> AsyncIterator[Callable[[Settings], Runner]]:
    """A runner on these settings (the default: the test's), as the service builds it."""
    db = mongo[settings.runner_db]
    await object_store(settings).ensure_bucket("videos")
    async with (
        kafka_producer(settings) as producer,
        group_offsets(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as tasks,
    ):
        yield lambda chosen: Runner.build(Jobs(db[PREDICTIONS], db[FRAMES]), object_store(chosen), producer, pool,
                                          chosen, tasks)  # fmt: skip


@pytest.fixture
def runner(make_runner, settings) -> Runner:
    return make_runner(settings)


async def start(runner: Runner, event: OutboxEvent) -> None:
    """Start a job as the jobs loop does (it takes a slot and goes on), then wait for its fan-out to end."""
    await runner.fan_outs.start_job(event)
    await runner.fan_outs.fanned_out(event.event_id)


async def consume_all_tasks(settings, expected: int) -> None:
    """Play the inference workers: take every frame message and commit, without any result coming back."""
    async with kafka_consumer(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as consumer:
        taken = 0
        async with asyncio.timeout(30):
            while taken < expected:
                taken += len(records(await consumer.getmany(timeout_ms=500)))
        await commit(consumer)


def upload(settings, path=None, content: bytes | None = None) -> OutboxEvent:
    event_id = str(uuid.uuid4())
    target = settings.storage_dir / "videos" / input_key(event_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    if path:
        shutil.copy(path, target)
    elif content is not None:
        target.write_bytes(content)
    return OutboxEvent(
        event_id=event_id, payload=OutboxPayload(bucket="videos", object=input_key(event_id)), created_at=utcnow()
    )


async def job(runner: Runner, event_id: str) -> Any:
    return await runner.jobs.collection.find_one({"_id": event_id})


async def test_a_video_fans_out_one_task_per_sampled_frame_once(runner: Runner, settings):
    event = upload(settings, bikes_video())
    await start(runner, event)
    await start(runner, event)  # a redelivered outbox event does not start the job twice
    doc = await job(runner, event.event_id)
    assert doc["status"] == "processing" and doc["total_frames"] == BIKES_SAMPLED
    assert doc["received_frames"] == 0 and doc["bucket"] == "videos"
    assert sum(doc["tasks"].values()) + len(doc["tasks"]) == BIKES_SAMPLED  # offsets of the last frames sent
    messages = await read_topic(settings, topics.INFERENCE_TASKS, BIKES_SAMPLED)
    assert len(messages) == BIKES_SAMPLED
    tasks = [InferenceTask.from_bytes(m.value) for m in messages]
    assert {(t.width, t.height) for t in tasks} == {(640, 272)}  # the original size, for the boxes
    assert sorted(t.frame for t in tasks) == list(range(0, 250, 5))
    assert {m.key for m in messages} == {event.event_id.encode()}
    assert len({m.partition for m in messages}) == settings.kafka_partitions  # one video, every partition
    assert runner.stats.jobs_started == 1


async def test_frames_handed_over_in_the_frame_store_skip_the_broker_and_go_once_stored(
    make_runner, settings, tmp_path
):
    runner = make_runner(settings.model_copy(update={"frame_store_dir": tmp_path / "frames"}))
    event = upload(settings, bikes_video())
    await start(runner, event)
    messages = await read_topic(settings, topics.INFERENCE_TASKS, BIKES_SAMPLED)
    tasks = [InferenceTask.from_bytes(m.value) for m in messages]
    assert all(t.stored and t.image == b"" for t in tasks) and max(len(m.value) for m in messages) < 300
    folder = tmp_path / "frames" / event.event_id
    frames = list(range(0, 250, 5))
    assert sorted(int(path.name) for path in folder.iterdir()) == frames
    assert {path.stat().st_size for path in folder.iterdir()} == {640 * 272 * 3 // 2}  # I420 at the model's size
    results = [InferenceResult(event_id=event.event_id, frame=f, objects=[]) for f in frames]
    await runner.results.store(results[:10])
    assert len(list(folder.iterdir())) == BIKES_SAMPLED - 10  # a stored result's frame goes
    left = tmp_path / "frames" / "job-whose-runner-died"  # not processing (no such job): the sweep takes it
    left.mkdir()
    (left / "0").write_bytes(b"frame")
    await runner.stalls.sweep_frames()
    assert not left.exists() and folder.exists()  # the job still processing keeps its frames
    await runner.results.store(results[10:])
    assert (await job(runner, event.event_id))["status"] == "predictable"
    assert not folder.exists() and runner.fan_outs.lifecycle.frames.used == 0


async def test_results_are_stored_once_and_the_job_completes_sorted(runner: Runner, settings):
    event = upload(settings, bikes_video())
    await start(runner, event)
    car = DetectedObject(class_name="car", box=[1, 2, 3, 4], conf=0.5)
    frames = list(range(0, 250, 5))
    results = [InferenceResult(event_id=event.event_id, frame=f, objects=[car] if f % 10 else []) for f in frames]
    await asyncio.gather(*(runner.results.store([r]) for r in reversed(results[1:])))
    await runner.results.store([results[2]])  # a redelivered result changes nothing
    doc = await job(runner, event.event_id)
    assert doc["status"] == "processing" and doc["received_frames"] == BIKES_SAMPLED - 1
    await runner.results.store([results[0]])
    doc = await job(runner, event.event_id)
    assert doc["status"] == "predictable"
    assert doc["received_frames"] == BIKES_SAMPLED
    stored = await runner.jobs.frames.find({"job": event.event_id}).sort("_id", 1).to_list(None)
    assert [f["frame"] for f in stored] == frames  # one small document per frame, in frame order by _id
    assert stored[1]["objects"] == [{"class": "car", "box": [1, 2, 3, 4], "conf": 0.5}]
    assert runner.stats.duplicate_results == 1
    await runner.results.store([results[3]])  # late duplicate after completion
    assert (await job(runner, event.event_id))["status"] == "predictable"


async def test_a_batch_of_several_jobs_is_stored_in_one_write_of_frames_each_counted_to_its_job(runner, settings):
    """Results of three jobs in one batch: one still processing with a redelivered frame among its new
    ones, one new, one already failed. Each job's counter moves by its own new frames; the failed one
    gets nothing stored."""
    first, second, over = (upload(settings, bikes_video()) for _ in range(3))
    for event in (first, second, over):
        assert await runner.jobs.create(event.event_id, "videos", event.payload.object)
    await runner.jobs.collection.update_one({"_id": over.event_id}, {"$set": {"status": "failed"}})
    await runner.results.store([InferenceResult(event_id=first.event_id, frame=0, objects=[])])

    def results(event: OutboxEvent, frames: range) -> list[InferenceResult]:
        return [InferenceResult(event_id=event.event_id, frame=frame, objects=[]) for frame in frames]

    batch = [*results(first, range(0, 20, 5)), *results(second, range(0, 15, 5)), *results(over, range(0, 10, 5))]
    recorded = await runner.jobs.record({event: [r for r in batch if r.event_id == event] for event in
                                         (first.event_id, second.event_id, over.event_id)})  # fmt: skip
    assert {event: stored for event, (_, stored) in recorded.items()} == {
        first.event_id: 3, second.event_id: 3, over.event_id: 0}  # fmt: skip
    assert recorded[first.event_id][0].received_frames == 4 and recorded[second.event_id][0].received_frames == 3
    assert recorded[over.event_id][0] is None
    assert await runner.jobs.frames.count_documents({"job": over.event_id}) == 0
    assert [(await job(runner, e.event_id))["received_frames"] for e in (first, second, over)] == [4, 3, 0]


async def test_a_job_is_not_complete_while_frame_documents_it_counted_are_missing(runner: Runner, settings):
    """A database that restarted may lose acknowledged frame documents and keep the counter's increment:
    the job then stays in processing with the counter set back to what is stored (the stall check
    resends the missing frames), and completes once they are there."""
    event = upload(settings, bikes_video())
    await start(runner, event)
    results = [InferenceResult(event_id=event.event_id, frame=f, objects=[]) for f in range(0, 250, 5)]
    await runner.results.store(results[:-1])
    await runner.jobs.frames.delete_many({"job": event.event_id, "frame": {"$in": [170, 230]}})  # lost
    await runner.results.store(results[-1:])  # the counter says 50 of 50
    doc = await job(runner, event.event_id)
    assert doc["status"] == "processing" and doc["received_frames"] == BIKES_SAMPLED - 2
    assert await runner.jobs.stored_frames(event.event_id) == frozenset(range(0, 250, 5)) - {170, 230}
    await runner.results.store([r for r in results if r.frame in (170, 230)])  # sent again, detected again
    doc = await job(runner, event.event_id)
    assert doc["status"] == "predictable" and doc["received_frames"] == BIKES_SAMPLED


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 1000, "video"), (None, "not found")],
    ids=["corrupt", "missing"],
)
async def test_a_broken_or_missing_video_fails_the_job_with_a_reason(runner: Runner, settings, content, reason):
    event = upload(settings, content=content)
    await start(runner, event)
    doc = await job(runner, event.event_id)
    assert doc["status"] == "failed"
    assert reason in doc["error"]


async def age(runner: Runner, event_id: str, seconds: float = 3600) -> None:
    """Make a job look as if it had made no progress for `seconds` (and its frames all taken as long ago)."""
    await runner.jobs.collection.update_one(
        {"_id": event_id}, {"$set": {"updated_at": utcnow() - timedelta(seconds=seconds)}}
    )
    if event_id in runner.stalls.taken_at:
        runner.stalls.taken_at[event_id] -= seconds


async def test_a_quiet_job_whose_frames_are_queued_waits_and_one_whose_frames_were_lost_is_resent(runner, settings):
    event = upload(settings, bikes_video())
    await start(runner, event)
    for frame in range(0, 150, 5):  # 30 of 50 results arrive; the other 20 frames are queued
        await runner.results.store([InferenceResult(event_id=event.event_id, frame=frame, objects=[])])
    for _ in range(3):  # quiet for an hour, but its frames wait for the inference workers: no resend
        await age(runner, event.event_id)
        await runner.stalls.resend_stalled()
    assert runner.stats.resends == 0 and runner.stats.waiting == 1
    await consume_all_tasks(settings, BIKES_SAMPLED)  # taken by inference, and their results lost
    await age(runner, event.event_id)
    await runner.stalls.resend_stalled()  # first look with nothing queued: its results may still be on their way
    assert runner.stats.resends == 0
    await age(runner, event.event_id)
    await runner.stalls.resend_stalled()  # a stall timeout later, still nothing: the frames were lost
    assert runner.stats.resends == 1 and runner.stats.lost_resends == 0  # lost after the broker served them
    tasks = [InferenceTask.from_bytes(m.value) for m in await read_topic(settings, topics.INFERENCE_TASKS, 70)]
    sent = Counter(t.frame for t in tasks)
    assert len(tasks) == BIKES_SAMPLED + 20
    assert sorted(frame for frame, times in sent.items() if times == 2) == list(range(150, 250, 5))
    await runner.results.store([InferenceResult(event_id=event.event_id, frame=150, objects=[])])
    assert (await job(runner, event.event_id))["resends"] == 0  # progress: the count starts again


async def test_a_job_whose_resends_bring_nothing_back_fails(runner, settings):
    settings.max_resends = 1  # the runner reads its settings when it checks: one resend, then it fails
    event = upload(settings, bikes_video())
    await start(runner, event)
    expected = BIKES_SAMPLED
    for _ in range(settings.max_resends + 1):
        await consume_all_tasks(settings, expected)  # every frame taken, no result ever comes back
        expected = BIKES_SAMPLED
        for _ in range(2):
            await age(runner, event.event_id)
            await runner.stalls.resend_stalled()
    doc = await job(runner, event.event_id)
    assert runner.stats.resends == settings.max_resends
    assert doc["status"] == "failed" and "no progress after 1 resends" in doc["error"]


async def test_a_job_whose_runner_died_while_reading_the_video_is_fanned_out_again(runner: Runner, settings):
    event = upload(settings, bikes_video())
    assert await runner.jobs.create(event.event_id, "videos", event.payload.object)  # then the runner "died"
    for _ in range(2):  # nothing of it in flight: marked at the first look, fanned out again at the next
        await age(runner, event.event_id)
        await runner.stalls.resend_stalled()
    doc = await job(runner, event.event_id)
    assert doc["total_frames"] == BIKES_SAMPLED and doc["resends"] == 1
    assert len(await read_topic(settings, topics.INFERENCE_TASKS, BIKES_SAMPLED)) == BIKES_SAMPLED


async def test_frames_resent_after_a_broker_lost_its_log_are_waited_for_while_queued(runner: Runner, settings):
    """A broker that lost its log numbers messages from 0 again: the resent frames' offsets are lower
    than the job's old ones. While they are queued (no inference worker is back yet), the job waits."""
    settings.max_resends = 1
    event = upload(settings, bikes_video())
    assert await runner.jobs.create(event.event_id, "videos", event.payload.object)
    lost = {str(partition): 1_000_000 for partition in range(settings.kafka_partitions)}
    await runner.jobs.collection.update_one({"_id": event.event_id}, {"$set": {"tasks": lost}})
    for _ in range(2):  # the old offsets are past the topic's end: lost, so fanned out again
        await age(runner, event.event_id)
        await runner.stalls.resend_stalled()
    assert len(await read_topic(settings, topics.INFERENCE_TASKS, BIKES_SAMPLED)) == BIKES_SAMPLED
    for _ in range(2):  # nobody has taken the resent frames
        await age(runner, event.event_id)
        await runner.stalls.resend_stalled()
    doc = await job(runner, event.event_id)
    assert doc["status"] == "processing" and runner.stats.resends == runner.stats.lost_resends == 1
    assert doc["resends"] == 0  # what the broker lost is not the job's fault: it does not count towards MAX_RESENDS
    assert max(doc["tasks"].values()) < BIKES_SAMPLED  # the resend's own offsets


async def wait_for(check) -> None:  # noqa: ANN001
    """Until `check()`, the runner's own state in this event loop, is true."""
    await eventually(lambda: asyncio.sleep(0, check()), interval=0.01)


async def test_a_job_runs_at_most_frames_in_flight_ahead_of_its_stored_results(make_runner, settings):
    runner = make_runner(settings.model_copy(update={"runner_frames_in_flight": 10}))
    event = upload(settings, bikes_video())
    await runner.fan_outs.start_job(event)
    fanning = runner.fan_outs.fanning[event.event_id]
    await wait_for(
        lambda: event.event_id in runner.fan_outs.flows and runner.fan_outs.flows[event.event_id].published == 10
    )
    flow = runner.fan_outs.flows[event.event_id]
    await asyncio.sleep(0.3)  # watched for a while: it publishes no more than its room
    assert flow.published == 10 and not fanning.done()
    stored = 0
    while not fanning.done():  # results come back, five at a time: the runner publishes as they do
        if flow.published - stored >= 5 or (flow.published == BIKES_SAMPLED and stored < BIKES_SAMPLED):
            batch = range(stored, min(stored + 5, flow.published))
            await runner.results.store([InferenceResult(event_id=event.event_id, frame=5 * i, objects=[])
                                        for i in batch])  # fmt: skip
            stored += len(batch)
            assert flow.published - stored <= 10
        await asyncio.sleep(0.01)
    await fanning
    doc = await job(runner, event.event_id)
    assert doc["total_frames"] == BIKES_SAMPLED and doc["status"] in ("processing", "predictable")
    assert event.event_id not in runner.fan_outs.flows  # nothing kept once the job is fanned out


async def test_the_jobs_loop_fans_jobs_out_side_by_side_and_stops_them_on_stop(make_runner, settings):
    runner = make_runner(settings.model_copy(update={"runner_frames_in_flight": 5, "runner_active_jobs": 2}))
    stop = asyncio.Event()
    fan_outs = asyncio.create_task(runner.fan_outs.run(stop))
    first, second = upload(settings, bikes_video()), upload(settings, bikes_video())
    await runner.fan_outs.start_job(first)  # returns once the job exists: its frames are published meanwhile
    await runner.fan_outs.start_job(second)
    await wait_for(lambda: all(e.event_id in runner.fan_outs.flows and runner.fan_outs.flows[e.event_id].published == 5
                               for e in (first, second)))  # fmt: skip
    assert len(runner.fan_outs.fanning) == 2 and runner.fan_outs.slots.locked()  # a third job waits
    stop.set()
    await asyncio.wait_for(fan_outs, 30)
    assert not runner.fan_outs.fanning and not runner.fan_outs.flows  # cancelled: the stall check resends their frames
    for event in (first, second):
        assert (await job(runner, event.event_id))["status"] == "processing"


HOSTILE = {  # the red-team pass's crafted videos: what each must fail with
    "two-programs-ts": (lambda: hostile.two_programs_ts(), "could not be decoded"),
    "80-million-frames": (lambda: hostile.frame_bomb(), "declares 80000000 frames, more than the limit"),
    "larger-than-declared": (lambda: hostile.larger_than_declared(8200, 1000), "a frame is 8200x1000 pixels"),
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_crafted_video_fails_its_own_job_and_never_stops_the_runner(runner: Runner, settings, name):
    """Each one stopped the runner (an IndexError from the demuxer) or took it to gigabytes (an index
    of 80 million entries; frames larger than the header said) before the limits."""
    make, reason = HOSTILE[name]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stop = asyncio.Event()
    fan_outs = asyncio.create_task(runner.fan_outs.run(stop))
    crafted, fine = upload(settings, content=make()), upload(settings, bikes_video())
    await runner.fan_outs.start_job(crafted)
    await runner.fan_outs.start_job(fine)

    async def finished() -> bool:
        doc = await job(runner, crafted.event_id)
        return doc["status"] == "failed" and (await job(runner, fine.event_id)).get("total_frames") == BIKES_SAMPLED

    await eventually(finished, timeout=60)
    assert reason in (await job(runner, crafted.event_id))["error"]
    assert not fan_outs.done() and runner.fan_outs.crash is None  # the runner goes on, with the other job
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 300, f"the runner's peak memory grew by {grown_mb:.0f} MB"
    stop.set()
    await asyncio.wait_for(fan_outs, 30)


async def test_a_video_longer_than_the_limit_fails_before_a_frame_is_sent(make_runner, settings):
    runner = make_runner(settings.model_copy(update={"max_video_seconds": 5}))
    event = upload(settings, bikes_video())  # 10 s
    await start(runner, event)
    doc = await job(runner, event.event_id)
    assert doc["status"] == "failed" and doc["error"] == "the video lasts 10 s, longer than the limit of 5 s"
    assert runner.stats.frames_published == 0
