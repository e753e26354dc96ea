"""The runner's fan-out: a job's video becomes frame messages on `inference_tasks`.

Frames are published while the video is read: decoding runs in a thread of its own, a few frames
ahead of the event loop, preprocessing and JPEG encoding in a process pool, with a bounded window in
flight, so memory does not grow with video length. Up to RUNNER_ACTIVE_JOBS jobs are fanned out side
by side (the slots exist from construction), each at most RUNNER_FRAMES_IN_FLIGHT frames ahead of its
stored results, so their frames share the inference workers.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from events import metrics, topics
from events.contracts import InferenceTask, OutboxEvent
from events.log import get_logger
from events.runtime import read_ahead
from events.settings import Settings
from events.statuses import RunnerStatus
from events.storage import ObjectStore, PermanentStorageError
from runner.frames import Frame, VideoError, encode_frame, sample_frames
from runner.jobs import Jobs
from runner.lifecycle import Lifecycle, Stats
from runner.probe import probe
from runner.stalls import BEAT_S

log = get_logger(__name__)
DELIVERY_BATCH = 256
FLOW_CHECK_S = 2.0  # a fan-out waiting for room reads its job's progress this often (another runner's results)
FINAL_BEAT_S = 2.0  # a fan-out cancelled at a stop records its offsets within this, or not at all


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
class FanOut:
    jobs: Jobs
    store: ObjectStore
    producer: AIOKafkaProducer
    pool: Executor
    settings: Settings
    lifecycle: Lifecycle
    stats: Stats
    flows: dict[str, Flow] = field(default_factory=dict)  # the jobs being fanned out
    fanning: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # job -> its fan-out, started by the jobs loop
    crash: BaseException | None = None
    stopping: bool = False
    crashed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.settings.runner_active_jobs)  # RUNNER_ACTIVE_JOBS fan-outs at once
        metrics.start_at_zero(metrics.FRAMES, {"stage": "published"})

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
        """Create the job, then fan it out alongside the jobs being fanned out already: the jobs loop waits
        here for a free slot (at most RUNNER_ACTIVE_JOBS at once), and goes on once the job exists.

        The outbox event is committed once the job exists: a runner that dies while fanning it out
        leaves it to the stall check, which sends its missing frames."""
        bucket, key = event.payload.bucket, event.payload.object
        await self.slots.acquire()
        try:
            if self.stopping:  # not committed: the runner that starts next takes the event
                raise asyncio.CancelledError
            created = await self.jobs.create(event.event_id, bucket, key)
        except BaseException:
            self.slots.release()
            raise
        if not created:
            log.info("job already exists, outbox event ignored", duplicate_events=1)
            self.slots.release()
            return
        self.stats.jobs_started += 1
        task = asyncio.create_task(self.fan_out(event.event_id, bucket, key))
        self.fanning[event.event_id] = task
        task.add_done_callback(lambda done: self.fan_out_done(event.event_id, done))

    def fan_out_done(self, event_id: str, task: asyncio.Task[None]) -> None:
        self.fanning.pop(event_id, None)
        self.slots.release()
        if not task.cancelled() and (error := task.exception()) is not None and self.crash is None:
            self.crash = error  # an infrastructure error (the rest is handled in fan_out): the runner stops
            self.crashed.set()

    async def fanned_out(self, event_id: str) -> None:
        """Until the job's fan-out (if one is under way) has ended."""
        if (task := self.fanning.get(event_id)) is not None:
            await asyncio.wait([task])

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: a fan-out's infrastructure error stops the runner (it is restarted and the stall
        check resends); on stop, the fan-outs under way are cancelled."""
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self.crashed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stopping = True
            under_way = list(self.fanning.values())
            for task in [*waits, *under_way]:
                task.cancel()
            await asyncio.gather(*waits, *under_way, return_exceptions=True)
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
            await self.lifecycle.fail(
                event_id, f"video not found in storage: {bucket}/{key}" if missing else str(error)
            )
            return
        log.info(
            "frames published", total_frames=total, skipped=len(skip), seconds=round(time.monotonic() - started, 3)
        )
        job = await self.jobs.set_total(event_id, total)
        if job and job.is_complete():
            await self.lifecycle.complete(job)
