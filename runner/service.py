"""Runner loops: jobs from `outbox_events` fan out to `inference_tasks`; `inference_results` are collected.

Frames are published while the video is read: decoding runs in a thread, preprocessing and JPEG
encoding in a process pool, with a bounded window in flight, so memory does not grow with video length.
"""

import asyncio
import multiprocessing
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from pydantic import ValidationError

from events import topics
from events.clients import commit, ensure_topics, kafka_consumer, kafka_producer, mongo_client, object_store, records
from events.contracts import PREDICTIONS, InferenceResult, InferenceTask, OutboxEvent, RunnerPrediction
from events.deadletter import dead_letter
from events.log import get_logger
from events.runtime import http_server, wait_or_stop
from events.settings import Settings
from events.storage import ObjectStore
from runner.frames import VideoError, encode_frame, sample_frames
from runner.jobs import Jobs

log = get_logger(__name__)
Message = TypeVar("Message", OutboxEvent, InferenceResult)
SERVICE = "runner"
DELIVERY_BATCH = 256
JOB_POLL_INTERVAL_MS = 60 * 60 * 1000  # one job may take long to fan out; its offset is committed after


@dataclass
class Stats:
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    frames_published: int = 0
    results_stored: int = 0
    duplicate_results: int = 0
    resends: int = 0
    dead_letters: int = 0
    consuming: set[str] = field(default_factory=set)  # topics with partitions assigned to this runner
    started: float = field(default_factory=time.monotonic)


@dataclass
class Runner:
    jobs: Jobs
    store: ObjectStore
    producer: AIOKafkaProducer
    pool: Executor
    settings: Settings
    stats: Stats = field(default_factory=Stats)

    async def publish_frames(self, path: Path, event_id: str, skip: frozenset[int] = frozenset()) -> int:
        """Sample, preprocess and publish the frames of one video, but those in `skip` (already detected).

        Returns how many frames the video has at this stride (published or skipped)."""
        loop = asyncio.get_running_loop()
        topic, key = self.settings.topic(topics.INFERENCE_TASKS), event_id.encode()
        window = 2 * self.settings.preprocess_workers
        pending: deque[tuple[int, asyncio.Future[str]]] = deque()
        deliveries: list[asyncio.Future] = []
        # Keyed by the job, but spread round-robin over the partitions: one video keeps every
        # inference worker busy, not only the one that owns the key's partition.
        partitions = sorted(await self.producer.partitions_for(topic))

        async def publish_oldest() -> None:
            index, encoded = pending.popleft()
            task = InferenceTask(event_id=event_id, frame=index, image=await encoded)
            partition = partitions[(index // self.settings.frame_stride) % len(partitions)]
            deliveries.append(await self.producer.send(topic, task.to_bytes(), key=key, partition=partition))
            if len(deliveries) >= DELIVERY_BATCH:
                await asyncio.gather(*deliveries)
                deliveries.clear()

        frames = sample_frames(path, self.settings.frame_stride)
        count = 0
        try:
            while (item := await asyncio.to_thread(next, frames, None)) is not None:
                index, frame = item
                count += 1
                if index in skip:
                    continue
                pending.append(
                    (index, loop.run_in_executor(self.pool, encode_frame, frame, self.settings.jpeg_quality))
                )
                if len(pending) >= window:
                    await publish_oldest()
            while pending:
                await publish_oldest()
            await asyncio.gather(*deliveries)
        finally:
            frames.close()
        self.stats.frames_published += count - len(skip)
        return count

    async def start_job(self, event: OutboxEvent) -> None:
        bucket, key = event.payload.bucket, event.payload.object
        if not await self.jobs.create(event.event_id, bucket, key):
            log.info("job already exists, outbox event ignored", duplicate_events=1)
            return
        self.stats.jobs_started += 1
        await self.fan_out(event.event_id, bucket, key)

    async def fan_out(self, event_id: str, bucket: str, key: str, skip: frozenset[int] = frozenset()) -> None:
        """Publish the frames of a job (but `skip`), then record how many it has; a broken video fails it."""
        started = time.monotonic()
        try:
            async with self.store.local_copy(bucket, key) as path:
                total = await self.publish_frames(path, event_id, skip)
            if total == 0:
                raise VideoError("the video has no decodable frames")
        except (VideoError, FileNotFoundError) as error:
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

    async def resend_stalled(self) -> None:
        """Jobs with no progress for STALL_TIMEOUT_S get their missing frames sent again (a broker may have
        lost them, a runner may have died while reading the video); after MAX_RESENDS they fail."""
        for stalled in await self.jobs.stalled(timedelta(seconds=self.settings.stall_timeout_s)):
            job = await self.jobs.claim_resend(stalled)
            if job is None:
                continue
            with structlog.contextvars.bound_contextvars(event_id=job.id):
                if job.resends > self.settings.max_resends or job.object is None:
                    await self.fail(
                        job.id, f"no progress after {job.resends - 1} resends of the missing frames in a row"
                    )
                    continue
                done = frozenset(int(frame) for frame in job.frame_results)
                log.warning("job stalled, resending missing frames", resends=job.resends, received=len(done))
                self.stats.resends += 1
                await self.fan_out(job.id, job.bucket, job.object, done)

    async def watch_stalls(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, self.settings.stall_check_interval_s):
            await self.resend_stalled()

    async def store_results(self, results: list[InferenceResult]) -> None:
        """Store a batch of results, one write per job in the usual case; redelivered frames change nothing."""
        by_job: dict[str, list[InferenceResult]] = defaultdict(list)
        for result in results:
            by_job[result.event_id].append(result)
        for event_id, batch in by_job.items():
            with structlog.contextvars.bound_contextvars(event_id=event_id):
                job, stored = await self.jobs.record(event_id, batch)
                self.stats.results_stored += stored
                self.stats.duplicate_results += len(batch) - stored
                if stored < len(batch):
                    log.debug("results ignored: duplicates or job over", ignored=len(batch) - stored)
                if job is not None and job.is_complete():
                    await self.complete(job)

    async def complete(self, job: RunnerPrediction) -> None:
        if await self.jobs.complete(job):
            self.stats.jobs_completed += 1
            log.info("job predictable", total_frames=job.total_frames)

    async def consume_jobs(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        async def start(events: list[OutboxEvent]) -> None:
            for event in events:
                with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                    await self.start_job(event)

        await self.consume(consumer, stop, OutboxEvent, start, max_records=1)

    async def consume_results(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        await self.consume(consumer, stop, InferenceResult, self.store_results, max_records=500)

    async def consume(
        self,
        consumer: AIOKafkaConsumer,
        stop: asyncio.Event,
        contract: type[Message],
        handle: Callable[[list[Message]], Awaitable[None]],
        max_records: int,
    ) -> None:
        """Parse and handle each batch, then commit it; a message that does not parse is dead-lettered."""
        topic = self.settings.topic(contract.TOPIC)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
            if consumer.assignment():
                self.stats.consuming.add(topic)
            parsed = []
            for message in records(batches):
                try:
                    parsed.append(contract.from_bytes(message.value))
                except ValidationError as error:
                    await dead_letter(self.producer, self.settings, SERVICE, message, error)
                    self.stats.dead_letters += 1
            if parsed:
                await handle(parsed)
            if batches:
                await commit(consumer)


def health_app(stats: Stats) -> FastAPI:
    app = FastAPI(title="vdetect runner")

    @app.get("/health")
    async def health() -> dict:
        counters = {name: value for name, value in asdict(stats).items() if name not in ("started", "consuming")}
        return {
            "status": "ok",
            "service": SERVICE,
            "ready": len(stats.consuming) == 2,  # jobs and results both reach this runner
            **counters,
            "uptime_seconds": round(time.monotonic() - stats.started, 3),
        }

    return app


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.preprocess_workers, mp_context=spawn) as pool:
        async with (
            mongo_client(settings.runner_mongo) as client,
            kafka_producer(settings) as producer,
            kafka_consumer(
                settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP, 1, max_poll_interval_ms=JOB_POLL_INTERVAL_MS
            ) as jobs_consumer,
            kafka_consumer(settings, topics.INFERENCE_RESULTS, topics.RUNNER_RESULTS_GROUP, 500) as results_consumer,
        ):
            runner = Runner(
                Jobs(client[settings.runner_db][PREDICTIONS]), object_store(settings), producer, pool, settings
            )
            async with http_server(health_app(runner.stats), settings.bind_host, settings.runner_port):
                log.info("runner ready")
                await asyncio.gather(
                    runner.consume_jobs(jobs_consumer, stop),
                    runner.consume_results(results_consumer, stop),
                    runner.watch_stalls(stop),
                )
