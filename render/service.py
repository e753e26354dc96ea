"""The render worker: follows `job_events` (its own group) for jobs to draw, a finished job that asked for
its annotated video (`ready` with `render`) or one asked for later (`render`, from `POST .../render`).

Each is made from the job's video and detection file (local copies), written to a temporary file and
stored as `annotated/{id}.mp4` if absent; a rendering that fails stores `annotated/{id}.failed.json`
with the reason: only the rendering failed, never the job. One rendering at a time per worker (it uses
a core); scale by running more workers (the group shares `job_events`' partitions). The consumer may
be away from the broker for up to RENDER_MAX_SECONDS while it renders; a worker that dies mid-way has
committed nothing, so the event is delivered again and the video made again."""

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from events import topics
from events.clients import ensure_topics, kafka_consumer, kafka_producer, object_store
from events.consume import Item, Loop, parse_with
from events.contracts import (
    FailureFile,
    JobEvent,
    JobEventType,
    StorageLocation,
    annotated_failure_key,
    annotated_key,
    detection_key,
    utcnow,
)
from events.deadletter import dead_letter
from events.health import counters, health_app
from events.log import get_logger
from events.retry import is_infrastructure
from events.runtime import http_server
from events.settings import Settings
from events.storage import ObjectStore
from render.video import RenderError, render
from runner.frames import VideoError

log = get_logger(__name__)
NAME = "render"


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    rendered: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0


def wanted(event: JobEvent) -> StorageLocation | None:
    """The video to draw, if the event asks for a rendering (`ready` with `render`, or `render`)."""
    asked = event.type == JobEventType.RENDER or (event.type == JobEventType.READY and bool(event.render))
    return event.video if asked else None


@dataclass
class Renderer:
    store: ObjectStore
    producer: AIOKafkaProducer
    settings: Settings
    stats: Stats = field(default_factory=Stats)

    async def handle(self, items: list[Item[JobEvent]]) -> None:
        for _, event in items:
            if (video := wanted(event)) is not None:
                with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                    await self.make(event.event_id, video)

    async def make(self, event_id: str, video: StorageLocation) -> None:
        """The job's annotated video, beside its result (in its video's bucket), unless it is there."""
        bucket = video.bucket
        if await self.store.exists(bucket, annotated_key(event_id)):
            self.stats.skipped += 1
            log.info("annotated video already made", duplicates=1)
            return
        if await self.store.size(bucket, detection_key(event_id)) is None:
            self.stats.skipped += 1  # asked for, then deleted: nothing is left behind for it
            log.info("no result to draw: the job was deleted")
            return
        started = time.monotonic()
        try:
            frames = await self.draw(video, event_id)
        except Exception as error:
            if is_infrastructure(error):
                raise  # storage unreachable: the worker stops and the event is delivered again
            reason = str(error) if isinstance(error, RenderError | VideoError) else f"{type(error).__name__}: {error}"
            failure = FailureFile(event_id=event_id, error=reason[:2000], failed_at=utcnow())
            await self.store.put_bytes(bucket, annotated_failure_key(event_id), failure.to_bytes(), "application/json")
            self.stats.failed += 1
            log.error("annotated video failed", error=reason[:500], render_failures=1)
            return
        self.stats.rendered += 1
        self.stats.frames += frames
        seconds = time.monotonic() - started
        log.info("annotated video made", frames=frames, seconds=round(seconds, 2), fps=round(frames / seconds, 1))

    async def draw(self, location: StorageLocation, event_id: str) -> int:
        """Render into a temporary file and store it: the video's and the result's local copies, the output."""
        bucket, result_key = location.bucket, detection_key(event_id)
        async with (
            self.store.local_copy(bucket, location.object) as video,
            self.store.local_copy(bucket, result_key) as result,
        ):
            with tempfile.TemporaryDirectory(prefix="vdetect-render-") as folder:
                out = Path(folder) / "annotated.mp4"
                frames = await asyncio.to_thread(render, video, result, out, self.settings.render_max_seconds)
                with out.open("rb") as made:
                    await self.store.put_if_absent(bucket, annotated_key(event_id), made, "video/mp4")
        return frames

    async def reject(self, message: ConsumerRecord, event: JobEvent | None, error: Exception) -> None:
        await dead_letter(self.producer, self.settings, NAME, message, error)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    store = object_store(settings)
    poll_ms = int(settings.render_max_seconds * 1000) + 60_000  # a rendering keeps the consumer away this long
    async with (
        kafka_producer(settings) as producer,
        kafka_consumer(
            settings, topics.JOB_EVENTS, topics.RENDER_GROUP, 100, quiet=True, max_poll_interval_ms=poll_ms
        ) as consumer,
    ):
        renderer = Renderer(store, producer, settings)
        loop: Loop[JobEvent] = Loop(consumer, parse_with(JobEvent.from_bytes), renderer.handle, renderer.reject, 100)
        async with http_server(health_app(NAME, lambda: counters(renderer.stats)), settings.bind_host,
                               settings.render_port):  # fmt: skip
            log.info("render worker ready")
            await loop.run(stop)
