"""The runner's moves of a job (`events.runnerstate`), with their counters and log lines: shared by the
fan-out, the result store and the stall watch."""

import time
from dataclasses import dataclass, field

from events.contracts import RunnerPrediction
from events.framestore import FrameStore
from events.log import get_logger
from runner.jobs import Jobs

log = get_logger(__name__)


@dataclass
class Stats:
    jobs_started: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    frames_published: int = 0
    results_stored: int = 0
    duplicate_results: int = 0
    resends: int = 0
    lost_resends: int = 0  # of which for frame messages the broker no longer served (`stalls.BROKER_LOST`)
    waiting: int = 0  # quiet jobs whose frames were still queued or in process at the last check
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class Lifecycle:
    jobs: Jobs
    stats: Stats
    frames: FrameStore | None = None  # FRAME_STORE_DIR's: a job over leaves nothing there

    def over(self, event_id: str) -> None:
        """The job is over (complete, failed or deleted): its frames in the store go."""
        if self.frames is not None:
            self.frames.drop_job(event_id)

    async def complete(self, job: RunnerPrediction) -> None:
        """processing -> predictable, once every frame's result is stored."""
        self.over(job.id)
        if await self.jobs.complete(job):
            self.stats.jobs_completed += 1
            log.info("job predictable", total_frames=job.total_frames)

    async def fail(self, event_id: str, reason: str) -> None:
        """processing -> failed, with the reason."""
        self.over(event_id)
        if await self.jobs.fail(event_id, reason):
            self.stats.jobs_failed += 1
            log.error("job failed", reason=reason)
