"""The runner's fan-out: up to RUNNER_ACTIVE_JOBS jobs are fanned out side by side (the slots exist from
construction), each published by `runner.publish`, so their frames share the inference workers; a job
whose video cannot be read fails with the reason, and one whose frames are all stored completes."""

import asyncio
import time
from dataclasses import dataclass, field

from events import metrics
from events.contracts import OutboxEvent
from events.log import get_logger
from events.storage import ObjectStore, PermanentStorageError
from runner.frames import VideoError
from runner.jobs import Jobs
from runner.lifecycle import Lifecycle, Stats
from runner.publish import Flow, JobOver, Publisher

log = get_logger(__name__)


@dataclass
class FanOut:
    jobs: Jobs
    store: ObjectStore
    publisher: Publisher
    active_jobs: int  # RUNNER_ACTIVE_JOBS
    lifecycle: Lifecycle
    stats: Stats
    fanning: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # job -> its fan-out, started by the jobs loop
    crash: BaseException | None = None
    stopping: bool = False
    crashed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.active_jobs)

    @property
    def flows(self) -> dict[str, Flow]:
        """The jobs being fanned out, and how far each is ahead of its stored results."""
        return self.publisher.flows

    async def start_job(self, event: OutboxEvent) -> None:
        """Create the job, then fan it out alongside the jobs being fanned out already: the jobs loop waits
        here for a free slot (at most RUNNER_ACTIVE_JOBS at once), and goes on once the job exists.

        The outbox event is committed once the job exists: a runner that dies while fanning it out
        leaves it to the stall check, which sends its missing frames."""
        bucket, key, model = event.payload.bucket, event.payload.object, event.payload.model
        await self.slots.acquire()
        try:
            if self.stopping:  # not committed: the runner that starts next takes the event
                raise asyncio.CancelledError
            created = await self.jobs.create(event.event_id, bucket, key, model, event.payload.options)
        except BaseException:
            self.slots.release()
            raise
        if not created:
            log.info("job already exists, outbox event ignored", duplicate_events=1)
            self.slots.release()
            return
        self.stats.jobs_started += 1
        task = asyncio.create_task(self.fan_out(event.event_id, bucket, key, model=model.sha256 if model else None))
        self.fanning[event.event_id] = task
        metrics.RUNNER_JOBS.inc()  # what a scale-down would interrupt: the autoscaler keeps a runner for it
        task.add_done_callback(lambda done: self.fan_out_done(event.event_id, done))

    def fan_out_done(self, event_id: str, task: asyncio.Task[None]) -> None:
        self.fanning.pop(event_id, None)
        metrics.RUNNER_JOBS.dec()
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

    async def fan_out(
        self, event_id: str, bucket: str, key: str, skip: frozenset[int] = frozenset(), model: str | None = None
    ) -> None:
        """Publish the frames of a job (but `skip`) for its model (a hash; None: the workers' default), then
        record how many it has; a broken video fails it."""
        started = time.monotonic()
        sent: dict[int, int] = {}
        try:
            async with self.publisher.heartbeat(event_id, sent), self.store.local_copy(bucket, key) as path:
                total = await self.publisher.publish(path, event_id, sent, skip, model)
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
