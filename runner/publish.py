"""Publishing one job's frames: its video becomes frame messages on `inference_tasks`.

Decoding runs in a thread of its own, a few frames ahead of the event loop; preprocessing and JPEG
encoding run in a process pool, with a bounded window in flight, so memory does not grow with video
length. A job stays at most RUNNER_FRAMES_IN_FLIGHT frames ahead of its stored results (its `Flow`), so
jobs fanned out together share the inference workers.
"""

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from events import metrics, topics
from events.framestore import FrameStore
from events.log import get_logger
from events.runtime import read_ahead
from events.settings import Settings
from events.statuses import RunnerStatus
from runner.frames import Encoded, Frame, encode_frame, frame_task, sample_frames
from runner.jobs import Jobs
from runner.lifecycle import Stats
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
    RUNNER_FRAMES_IN_FLIGHT frames ahead of inference and jobs fanned out together share the workers;
    and which partition each frame waiting for its result went to, so that the next goes where the
    fewest wait."""

    stored_before: int  # the job's stored frames when this fan-out started (a resend's)
    published: int = 0
    stored: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: dict[int, int] = field(default_factory=dict)  # frame -> partition, oldest first
    placed: int = 0  # frames given a partition (whose turn it is on a tie)

    @property
    def in_flight(self) -> int:
        return self.published - self.stored

    def place(self, frame: int, partitions: list[int]) -> int:
        """The partition for a frame: the one where the fewest of the job's frames wait for a result, in
        turn on a tie. A worker that falls behind (its core shared with decoding, a larger share of the
        machine's other work) gets fewer frames instead of holding most of the job's window while the
        others idle, and every worker has frames until the job's last: with a fixed turn, the slowest
        worker's backlog was the job's tail, one core idle for seconds."""
        for stale in list(self.waiting)[: max(0, len(self.waiting) - (self.in_flight - 1))]:
            del self.waiting[stale]  # stored by another runner (counted from the job, not named): oldest first
        load = Counter(self.waiting.values())
        turn = self.placed % len(partitions)
        partition = min(partitions[turn:] + partitions[:turn], key=load.__getitem__)
        self.waiting[frame] = partition
        self.placed += 1
        return partition

    def done(self, frames: list[int], stored: int) -> None:
        """Results of these frames were recorded, `stored` of them new: room for as many more."""
        for frame in frames:
            self.waiting.pop(frame, None)
        if stored:
            self.stored += stored
            self.changed.set()


@dataclass
class Outgoing:
    """One job's frames on their way to Kafka: encoded in the pool in order, spread over the topic's
    partitions where the fewest of its frames wait (`Flow.place`: one video keeps every inference worker
    busy, not only the one that owns the key's partition); `sent` keeps the offset of the job's last
    delivered message per partition."""

    producer: AIOKafkaProducer
    topic: str
    event_id: str
    partitions: list[int]
    sent: dict[int, int]
    model: str | None  # the sha256 of the job's model; None: the workers' default
    flow: Flow
    store: FrameStore | None = None  # FRAME_STORE_DIR's: the frames' bytes go there, their messages to Kafka
    pending: deque[tuple[Frame, asyncio.Future[Encoded]]] = field(default_factory=deque)
    deliveries: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)

    async def send_oldest(self) -> None:
        frame, encoding = self.pending.popleft()
        task = frame_task(self.event_id, frame, await encoding, self.model)
        if self.store is not None:
            task = self.store.put(task)
        partition = self.flow.place(frame.index, self.partitions)
        self.deliveries.append(
            await self.producer.send(self.topic, task.to_bytes(), key=self.event_id.encode(), partition=partition)
        )
        if len(self.deliveries) >= DELIVERY_BATCH:
            await self.delivered()

    async def delivered(self) -> None:
        for metadata in await asyncio.gather(*self.deliveries):
            self.sent[metadata.partition] = max(self.sent.get(metadata.partition, -1), metadata.offset)
        self.deliveries.clear()

    async def flush(self) -> None:
        """Everything encoded goes out, and its offsets are known."""
        while self.pending:
            await self.send_oldest()
        await self.delivered()


@dataclass
class Publisher:
    jobs: Jobs
    producer: AIOKafkaProducer
    pool: Executor
    settings: Settings
    stats: Stats
    flows: dict[str, Flow] = field(default_factory=dict)  # the jobs being fanned out
    frames: FrameStore | None = None  # FRAME_STORE_DIR's (None: frames travel in their messages)

    def __post_init__(self) -> None:
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

    async def publish(
        self, path: Path, event_id: str, sent: dict[int, int], skip: frozenset[int] = frozenset(),
        model: str | None = None,
    ) -> int:  # fmt: skip
        """Sample, scale, preprocess and publish the frames of one video, but those in `skip` (already
        detected); `sent` is kept up to date with the offset of the job's last message per partition.

        Returns how many frames the video has at this stride (published or skipped)."""
        limits = self.settings
        flow = self.flows[event_id] = Flow(stored_before=len(skip))  # first: the stall watch leaves it alone
        try:
            if not skip:  # a resend's video passed these checks when the job started
                info = await probe(path, limits.video_probe_memory_mb, limits.video_probe_timeout_s)
                info.check(limits.max_video_frames, limits.max_video_seconds)
                await self.jobs.expect(event_id, info, limits.frame_stride)
            topic = limits.topic(topics.INFERENCE_TASKS)
            out = Outgoing(self.producer, topic, event_id, sorted(await self.producer.partitions_for(topic)),
                           sent, model, flow, self.frames)  # fmt: skip
            count = await self.send_all(path, event_id, flow, out, skip)
        finally:
            self.flows.pop(event_id, None)
        self.stats.frames_published += count - len(skip)
        metrics.FRAMES.labels(stage="published").inc(count - len(skip))
        return count

    async def send_all(self, path: Path, event_id: str, flow: Flow, out: Outgoing, skip: frozenset[int]) -> int:
        """Decode, encode and send every sampled frame but those in `skip`; how many the video has."""
        limits = self.settings
        loop, window = asyncio.get_running_loop(), 2 * limits.preprocess_workers
        frames = sample_frames(path, limits.frame_stride, limits.model_input_size, limits.max_video_frames)
        count = 0
        async with contextlib.aclosing(read_ahead(frames, window)) as decoded:
            async for frame in decoded:
                count += 1
                if frame.index in skip:
                    continue
                if flow.in_flight >= limits.runner_frames_in_flight:
                    await out.flush()  # everything encoded goes out before the job waits for room
                    await self.wait_for_room(event_id, flow)
                flow.published += 1
                out.pending.append((frame, self.encode(loop, frame)))
                while out.pending and (len(out.pending) >= window or out.pending[0][1].done()):
                    await out.send_oldest()  # a frame goes out once encoded (a raw one at once)
        await out.flush()
        return count

    def encode(self, loop: asyncio.AbstractEventLoop, frame: Frame) -> asyncio.Future[Encoded]:
        """Raw frames are ready as they are; a JPEG is encoded in the pool's threads."""
        if self.settings.frame_encoding == "i420":
            done: asyncio.Future[Encoded] = loop.create_future()
            done.set_result(encode_frame(frame))
            return done
        return loop.run_in_executor(self.pool, encode_frame, frame, "jpeg", self.settings.jpeg_quality)

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
