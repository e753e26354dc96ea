"""Runner loops: jobs from `outbox_events` fan out to `inference_tasks`; `inference_results` are collected.

Frames are published while the video is read: decoding runs in a thread of its own, a few frames
ahead of the event loop, preprocessing and JPEG encoding in a process pool, with a bounded window in
flight, so memory does not grow with video length. Up to RUNNER_ACTIVE_JOBS jobs are fanned out side
by side, each at most RUNNER_FRAMES_IN_FLIGHT frames ahead of its stored results, so their frames
share the inference workers.
"""

import asyncio
import contextlib
import multiprocessing
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, RecordMetadata

from events import metrics, topics
from events.clients import (
    GroupOffsets,
    ensure_topics,
    group_offsets,
    kafka_consumer,
    kafka_producer,
    mongo_client,
    object_store,
)
from events.consume import Item, Loop, parse_with
from events.contracts import (
    FRAMES,
    PREDICTIONS,
    InferenceResult,
    InferenceTask,
    JobEvent,
    JobEventType,
    OutboxEvent,
    RunnerPrediction,
    utcnow,
)
from events.deadletter import dead_letter
from events.health import counters, health_app
from events.indexes import RUNNER_DB, ensure_indexes
from events.log import get_logger
from events.retry import is_infrastructure
from events.runtime import http_server, read_ahead, startup_deadline, wait_or_stop
from events.settings import Settings
from events.statuses import RunnerStatus
from events.storage import ObjectStore, PermanentStorageError
from runner.frames import Frame, VideoError, encode_frame, sample_frames
from runner.jobs import Jobs
from runner.probe import probe
from runner.stalls import BEAT_S, BROKER_LOST, LOST_AFTER_S, why_resend

log = get_logger(__name__)
SERVICE = "runner"
DELIVERY_BATCH = 256
JOB_POLL_INTERVAL_MS = 60 * 60 * 1000  # the jobs loop may wait long for a free fan-out slot
FLOW_CHECK_S = 2.0  # a fan-out waiting for room reads its job's progress this often (another runner's results)
FINAL_BEAT_S = 2.0  # a fan-out cancelled at a stop records its offsets within this, or not at all


@dataclass
class Stats:
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    frames_published: int = 0
    results_stored: int = 0
    duplicate_results: int = 0
    resends: int = 0
    waiting: int = 0  # quiet jobs whose frames were still queued or in process at the last check
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


class JobOver(Exception):
    """The job failed or was deleted while it was fanned out: the rest of its frames is not sent."""


@dataclass
class Flow:
    """A job being fanned out: frames published and stored since it started, so that it stays at most
    RUNNER_FRAMES_IN_FLIGHT frames ahead of inference and jobs fanned out together share the workers."""

    stored_before: int  # the job's stored frames when this fan-out started (a resend's)
    published: int = 0
    stored: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_flight(self) -> int:
        return self.published - self.stored


@dataclass
class Runner:
    """Fans jobs out into frames, stores the frames' results, and re-drives a job whose frames were lost.

    A job with no progress for STALL_TIMEOUT_S is re-driven only when none of its frames is anywhere
    in the system: every frame message it sent is past the inference group's committed offset (or
    gone with a restarted broker), and a further STALL_TIMEOUT_S has passed without progress for
    their results to arrive. A job waiting in a backlog, or behind an inference outage, only waits."""

    jobs: Jobs
    store: ObjectStore
    producer: AIOKafkaProducer
    pool: Executor
    settings: Settings
    tasks: GroupOffsets  # the inference workers' group on inference_tasks
    results: GroupOffsets | None = None  # the runners' group on inference_results (None: not consulted)
    stats: Stats = field(default_factory=Stats)
    taken_at: dict[str, float] = field(default_factory=dict)  # job -> when its frames were seen all taken
    flows: dict[str, Flow] = field(default_factory=dict)  # the jobs being fanned out
    fanning: set[asyncio.Task[None]] = field(default_factory=set)  # fan-outs started by the jobs loop
    slots: asyncio.Semaphore | None = None  # RUNNER_ACTIVE_JOBS fan-outs at once, once `run_fan_outs` runs
    crash: BaseException | None = None
    stopping: bool = False
    crashed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        metrics.start_at_zero(metrics.FRAMES, {"stage": "published"}, {"stage": "stored"})

    async def wait_for_room(self, event_id: str, flow: Flow) -> None:
        """Wait while RUNNER_FRAMES_IN_FLIGHT of the job's frames are published and not stored. Results this
        runner stores wake it at once; another runner's are read from the job every FLOW_CHECK_S. After
        STALL_TIMEOUT_S without progress it goes on: frames were lost, which the stall check mends."""
        progress_at = time.monotonic()
        while flow.in_flight >= self.settings.runner_frames_in_flight:
            stored, flow.changed = flow.stored, asyncio.Event()
            try:
                await asyncio.wait_for(flow.changed.wait(), FLOW_CHECK_S)
            except TimeoutError:
                job = await self.jobs.get(event_id)
                if job is None or job.status != RunnerStatus.PROCESSING:
                    raise JobOver from None
                flow.stored = max(flow.stored, job.received_frames - flow.stored_before)
            if flow.stored > stored:
                progress_at = time.monotonic()
            elif time.monotonic() - progress_at > self.settings.stall_timeout_s:
                log.warning("no frame came back for a while, publishing on", in_flight=flow.in_flight)
                return

    async def publish_frames(
        self, path: Path, event_id: str, sent: dict[int, int], skip: frozenset[int] = frozenset()
    ) -> int:
        """Sample, scale, preprocess and publish the frames of one video, but those in `skip` (already
        detected); `sent` is kept up to date with the offset of the job's last message per partition.

        Returns how many frames the video has at this stride (published or skipped)."""
        loop = asyncio.get_running_loop()
        flow = self.flows[event_id] = Flow(stored_before=len(skip))
        topic, key = self.settings.topic(topics.INFERENCE_TASKS), event_id.encode()
        window = 2 * self.settings.preprocess_workers
        pending: deque[tuple[Frame, asyncio.Future[str]]] = deque()
        deliveries: list[asyncio.Future[RecordMetadata]] = []
        # Keyed by the job, but spread round-robin over the partitions: one video keeps every
        # inference worker busy, not only the one that owns the key's partition.
        partitions = sorted(await self.producer.partitions_for(topic))

        async def delivered() -> None:
            for metadata in await asyncio.gather(*deliveries):
                sent[metadata.partition] = max(sent.get(metadata.partition, -1), metadata.offset)
            deliveries.clear()

        async def publish_oldest() -> None:
            frame, encoded = pending.popleft()
            task = InferenceTask(
                event_id=event_id, frame=frame.index, image=await encoded, width=frame.width, height=frame.height
            )
            partition = partitions[(frame.index // self.settings.frame_stride) % len(partitions)]
            deliveries.append(await self.producer.send(topic, task.to_bytes(), key=key, partition=partition))
            if len(deliveries) >= DELIVERY_BATCH:
                await delivered()

        limits = self.settings
        if not skip:  # a resend's video passed these checks when the job started
            info = await probe(path, limits.video_probe_memory_mb, limits.video_probe_timeout_s)
            info.check(limits.max_video_frames, limits.max_video_seconds)
            await self.jobs.expect(event_id, info.sampled(limits.frame_stride), info.fps)
        frames = sample_frames(path, limits.frame_stride, limits.model_input_size, limits.max_video_frames)
        count = 0
        try:
            async with contextlib.aclosing(read_ahead(frames, window)) as decoded:
                async for frame in decoded:
                    count += 1
                    if frame.index in skip:
                        continue
                    if flow.in_flight >= self.settings.runner_frames_in_flight:
                        while pending:  # everything encoded goes out before the job waits for room
                            await publish_oldest()
                        await delivered()
                        await self.wait_for_room(event_id, flow)
                    flow.published += 1
                    encoding = loop.run_in_executor(self.pool, encode_frame, frame.image, self.settings.jpeg_quality)
                    pending.append((frame, encoding))
                    if len(pending) >= window:
                        await publish_oldest()
            while pending:
                await publish_oldest()
            await delivered()
        finally:
            self.flows.pop(event_id, None)
        self.stats.frames_published += count - len(skip)
        metrics.FRAMES.labels(stage="published").inc(count - len(skip))
        return count

    async def start_job(self, event: OutboxEvent) -> None:
        """Create the job, then fan it out: alongside the jobs being fanned out already once `run_fan_outs`
        runs (at most RUNNER_ACTIVE_JOBS at once: the jobs loop waits for a free slot), here otherwise.

        The outbox event is committed once the job exists: a runner that dies while fanning it out
        leaves it to the stall check, which sends its missing frames."""
        bucket, key = event.payload.bucket, event.payload.object
        slots = self.slots
        if slots is not None:
            await slots.acquire()
        try:
            if self.stopping:  # not committed: the runner that starts next takes the event
                raise asyncio.CancelledError
            created = await self.jobs.create(event.event_id, bucket, key)
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        if not created:
            log.info("job already exists, outbox event ignored", duplicate_events=1)
            if slots is not None:
                slots.release()
            return
        self.stats.jobs_started += 1
        if slots is None:
            await self.fan_out(event.event_id, bucket, key)
            return
        task = asyncio.create_task(self.fan_out(event.event_id, bucket, key))
        self.fanning.add(task)
        task.add_done_callback(lambda done: self.fan_out_done(done, slots))

    def fan_out_done(self, task: asyncio.Task[None], slots: asyncio.Semaphore) -> None:
        self.fanning.discard(task)
        slots.release()
        if not task.cancelled() and (error := task.exception()) is not None and self.crash is None:
            self.crash = error  # an infrastructure error (the rest is handled in fan_out): the runner stops
            self.crashed.set()

    async def run_fan_outs(self, stop: asyncio.Event) -> None:
        """Fan jobs out side by side from now on. A fan-out's infrastructure error stops the runner (it is
        restarted and the stall check resends); on stop, the fan-outs under way are cancelled."""
        self.slots = asyncio.Semaphore(self.settings.runner_active_jobs)
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self.crashed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stopping = True
            for task in [*waits, *self.fanning]:
                task.cancel()
            await asyncio.gather(*waits, *self.fanning, return_exceptions=True)
        if self.crash is not None:
            raise self.crash

    @contextlib.asynccontextmanager
    async def heartbeat(self, event_id: str, sent: dict[int, int]) -> AsyncIterator[None]:
        """While a job is fanned out (its video downloaded, then read), its clock is kept fresh and the
        offsets sent so far are saved; a runner that dies mid-way stops the heartbeat."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(BEAT_S)
                await self.jobs.touch(event_id, dict(sent))

        task = asyncio.create_task(beat())
        try:
            yield
        except asyncio.CancelledError:  # stopped half way (SIGTERM): where its frames went tells the stall checks
            with contextlib.suppress(Exception):
                async with asyncio.timeout(FINAL_BEAT_S):
                    await self.jobs.touch(event_id, sent)
            raise
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.jobs.touch(event_id, sent)

    async def fan_out(self, event_id: str, bucket: str, key: str, skip: frozenset[int] = frozenset()) -> None:
        """Publish the frames of a job (but `skip`), then record how many it has; a broken video fails it."""
        started = time.monotonic()
        sent: dict[int, int] = {}
        try:
            async with self.heartbeat(event_id, sent), self.store.local_copy(bucket, key) as path:
                total = await self.publish_frames(path, event_id, sent, skip)
            if total == 0:
                raise VideoError("the video has no decodable frames")
        except JobOver:
            log.info("job over while its frames were published: the rest is not sent")
            return
        except (VideoError, FileNotFoundError, PermanentStorageError) as error:
            missing = isinstance(error, FileNotFoundError)
            await self.fail(event_id, f"video not found in storage: {bucket}/{key}" if missing else str(error))
            return
        log.info(
            "frames published", total_frames=total, skipped=len(skip), seconds=round(time.monotonic() - started, 3)
        )
        job = await self.jobs.set_total(event_id, total)
        if job and job.is_complete():
            await self.complete(job)

    async def fail(self, event_id: str, reason: str) -> None:
        if await self.jobs.fail(event_id, reason):
            self.stats.jobs_failed += 1
            log.error("job failed", reason=reason)

    def in_flight(self, quiet: list[RunnerPrediction], committed: dict[int, int], ends: dict[int, int]) -> set[str]:
        """The quiet jobs that may still have frames somewhere: queued for inference or being detected
        (the inference group has not committed past the job's last frame message, and the topic still
        holds it), or detected so recently that their results may still be on their way to this runner
        (less than STALL_TIMEOUT_S since the frames were seen all taken, with no progress since)."""
        now, busy = time.monotonic(), set()
        for job in quiet:
            if GroupOffsets.waiting(job.tasks, committed, ends):
                busy.add(job.id)
                self.taken_at.pop(job.id, None)
            elif now - self.taken_at.setdefault(job.id, now) < self.settings.stall_timeout_s:
                busy.add(job.id)
        return busy

    async def results_drained(self) -> bool:
        """Whether the runners' group has consumed every result there is. Inference commits a frame only
        once its result is acknowledged, so a job whose frames are all taken then has none on its way."""
        if self.results is None:
            return False
        committed, ends = await self.results.positions()
        return all(committed.get(partition, 0) >= end for partition, end in ends.items())

    async def resend_stalled(self) -> None:
        """Jobs with no progress for STALL_TIMEOUT_S and no frame in flight get their missing frames sent
        again (a broker may have lost them, a runner may have died while reading the video); after
        MAX_RESENDS in a row that brought nothing back, they fail. Sooner, after LOST_AFTER_S, where
        what is missing is known to be gone (`why_resend`); a resend of what the broker lost does not count
        towards MAX_RESENDS: an outage delays a job, it never fails it."""
        stall = self.settings.stall_timeout_s
        quiet = await self.jobs.quiet(timedelta(seconds=min(LOST_AFTER_S, stall)))
        self.taken_at = {job.id: self.taken_at[job.id] for job in quiet if job.id in self.taken_at}
        if not quiet:
            return
        committed, ends = await self.tasks.positions()  # before: frames sent after it are not taken for lost
        drained = await self.results_drained()
        now = utcnow()
        stalled = {job.id: job for job in quiet if job.updated_at and job.updated_at < now - timedelta(seconds=stall)}
        busy = self.in_flight(list(stalled.values()), committed, ends)
        self.stats.waiting = len(busy)
        for candidate in quiet:
            if candidate.id in self.flows:
                continue
            why = why_resend(candidate, committed, ends, drained, candidate.id in busy, candidate.id in stalled)
            if why is None:
                continue
            counted = why != BROKER_LOST
            if (job := await self.jobs.claim_resend(candidate, counted)) is None:
                continue
            self.taken_at.pop(job.id, None)
            with structlog.contextvars.bound_contextvars(event_id=job.id):
                if counted and job.resends > self.settings.max_resends or job.object is None:
                    await self.fail(
                        job.id, f"no progress after {job.resends - 1} resends of the missing frames in a row"
                    )
                    continue
                done = await self.jobs.stored_frames(job.id)
                log.warning("job stalled: frames lost, resending the missing ones", resends=job.resends,
                            received=len(done), why=why)  # fmt: skip
                self.stats.resends += 1
                await self.fan_out(job.id, job.bucket, job.object, done)

    async def watch_stalls(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, min(self.settings.stall_check_interval_s, LOST_AFTER_S)):
            try:
                await self.resend_stalled()
            except Exception as error:
                if not (is_infrastructure(error) or isinstance(error, TimeoutError)):
                    raise
                log.warning("stall check failed, trying again later", error=f"{type(error).__name__}: {error}"[:200])

    async def store_results(self, results: list[InferenceResult]) -> None:
        """Store a batch of results, one write per job in the usual case; redelivered frames change nothing."""
        by_job: dict[str, list[InferenceResult]] = defaultdict(list)
        for result in results:
            by_job[result.event_id].append(result)
        for event_id, batch in by_job.items():
            with structlog.contextvars.bound_contextvars(event_id=event_id):
                job, stored = await self.jobs.record(event_id, batch)
                if stored and (flow := self.flows.get(event_id)) is not None:
                    flow.stored += stored
                    flow.changed.set()  # room for more of its frames
                self.stats.results_stored += stored
                metrics.FRAMES.labels(stage="stored").inc(stored)
                self.stats.duplicate_results += len(batch) - stored
                if stored < len(batch):
                    log.debug("results ignored: duplicates or job over", ignored=len(batch) - stored)
                if job is not None and job.is_complete():
                    await self.complete(job)

    async def complete(self, job: RunnerPrediction) -> None:
        if await self.jobs.complete(job):
            self.stats.jobs_completed += 1
            log.info("job predictable", total_frames=job.total_frames)

    async def start_jobs(self, items: list[Item[OutboxEvent]]) -> None:
        for _, event in items:
            with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                await self.start_job(event)

    async def reject_job(self, message: ConsumerRecord, event: OutboxEvent | None, error: Exception) -> None:
        """An outbox event that could not be handled: dead-lettered, and its job fails with the reason."""
        await self.dead_letter(message, event, error)
        if event is not None:
            await self.fail(event.event_id, f"the job could not be started: {type(error).__name__}: {error}")

    async def forget_deleted(self, items: list[Item[JobEvent]]) -> None:
        """`deleted` job events: the API removed the job, the runner forgets it too."""
        for _, event in items:
            if event.type == JobEventType.DELETED:
                await self.jobs.forget(event.event_id)
                self.taken_at.pop(event.event_id, None)
                log.info("job deleted, forgotten", event_id=event.event_id)

    async def store_items(self, items: list[Item[InferenceResult]]) -> None:
        await self.store_results([result for _, result in items])

    async def dead_letter(self, message: ConsumerRecord, _parsed: object, error: Exception) -> None:
        await dead_letter(self.producer, self.settings, SERVICE, message, error)
        self.stats.dead_letters += 1


async def main(settings: Settings, stop: asyncio.Event) -> None:
    deadline = startup_deadline()
    await ensure_topics(settings)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.preprocess_workers, mp_context=spawn) as pool:
        async with (
            mongo_client(**settings.mongo(runner=True)) as client,
            kafka_producer(settings) as producer,
            kafka_consumer(
                settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP, 1, max_poll_interval_ms=JOB_POLL_INTERVAL_MS
            ) as jobs_consumer,
            kafka_consumer(settings, topics.INFERENCE_RESULTS, topics.RUNNER_RESULTS_GROUP, 500) as results_consumer,
            kafka_consumer(settings, topics.JOB_EVENTS, topics.RUNNER_CLEANUP_GROUP, 500) as events_consumer,
            group_offsets(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as tasks,
            group_offsets(settings, topics.INFERENCE_RESULTS, topics.RUNNER_RESULTS_GROUP) as results,
        ):
            db = client[settings.runner_db]
            await ensure_indexes(db, RUNNER_DB)
            runner = Runner(Jobs(db[PREDICTIONS], db[FRAMES]), object_store(settings), producer, pool, settings, tasks,
                            results)  # fmt: skip
            loops: list[Loop[Any]] = [
                Loop(jobs_consumer, parse_with(OutboxEvent.from_bytes), runner.start_jobs, runner.reject_job, 1),
                Loop(results_consumer, parse_with(InferenceResult.from_bytes), runner.store_items,
                     runner.dead_letter, 500),
                Loop(events_consumer, parse_with(JobEvent.from_bytes), runner.forget_deleted, runner.dead_letter, 500),
            ]  # fmt: skip

            def report() -> dict[str, Any]:  # ready: it has joined the groups of jobs, results and deletions
                return {"ready": all(loop.joined for loop in loops), **counters(runner.stats)}

            async with http_server(health_app(SERVICE, report), settings.bind_host, settings.runner_port):
                log.info("runner ready")
                deadline.cancel()
                async with asyncio.TaskGroup() as group:
                    group.create_task(runner.run_fan_outs(stop))
                    for loop in loops:
                        group.create_task(loop.run(stop))
                    group.create_task(runner.watch_stalls(stop))
