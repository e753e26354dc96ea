"""The runner's stall watch: a job with no progress is resent what is missing, once none of its frames is
anywhere in the system any more (`runner.stalls` says when and why).

A job with no progress for STALL_TIMEOUT_S is re-driven only when none of its frames is anywhere in
the system: every frame message it sent is past the inference group's committed offset (or gone with
a restarted broker), and a further STALL_TIMEOUT_S has passed without progress for their results to
arrive. A job waiting in a backlog, or behind an inference outage, only waits."""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from events import inflight
from events.clients import GroupOffsets
from events.contracts import RunnerPrediction, utcnow
from events.log import get_logger
from events.retry import is_infrastructure
from events.runtime import wait_or_stop
from events.settings import Settings
from runner.fanout import FanOut
from runner.jobs import Jobs
from runner.lifecycle import Stats
from runner.stalls import BROKER_LOST, LOST_AFTER_S, why_resend

log = get_logger(__name__)


@dataclass
class StallWatch:
    jobs: Jobs
    fan_out: FanOut  # a resend is a fan-out of the missing frames
    settings: Settings
    stats: Stats
    tasks: GroupOffsets  # the inference workers' group on inference_tasks
    results: GroupOffsets | None = None  # the runners' group on inference_results (None: not consulted)
    taken_at: dict[str, float] = field(default_factory=dict)  # job -> when its frames were seen all taken

    def in_flight(self, quiet: list[RunnerPrediction], committed: dict[int, int], ends: dict[int, int]) -> set[str]:
        """The quiet jobs that may still have frames somewhere (`events.inflight`): queued for inference or
        being detected, or taken so recently that their results may still be on their way to this runner
        (less than STALL_TIMEOUT_S since the frames were seen all taken, with no progress since)."""
        now, busy = time.monotonic(), set()
        for job in quiet:
            place = inflight.where(job.tasks, committed, ends)
            if place == inflight.Where.QUEUED:
                self.taken_at.pop(job.id, None)
            waited = now - self.taken_at.setdefault(job.id, now) if place == inflight.Where.TAKEN else None
            if not inflight.resend(place, waited, self.settings.stall_timeout_s) and place != inflight.Where.LOST:
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
            if candidate.id in self.fan_out.flows:
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
                    await self.fan_out.lifecycle.fail(
                        job.id, f"no progress after {job.resends - 1} resends of the missing frames in a row"
                    )
                    continue
                done = await self.jobs.stored_frames(job.id)
                log.warning("job stalled: frames lost, resending the missing ones", resends=job.resends,
                            received=len(done), why=why, sent_offsets=candidate.tasks,
                            end_offsets=ends, committed_offsets=committed)  # fmt: skip
                self.stats.resends += 1
                if not counted:
                    self.stats.lost_resends += 1
                await self.fan_out.fan_out(
                    job.id, job.bucket, job.object, done, job.model.sha256 if job.model else None
                )

    async def sweep_frames(self) -> None:
        """Frames left in the store by jobs no longer processing (their runner died before it cleaned up,
        or another runner finished them) go."""
        store = self.fan_out.lifecycle.frames
        if store is None or not (held := [job for job in store.jobs() if job not in self.fan_out.flows]):
            return
        live = await self.jobs.processing_among(held)
        for job in held:
            if job not in live:
                store.drop_job(job)

    async def run(self, stop: asyncio.Event) -> None:
        while not await wait_or_stop(stop, min(self.settings.stall_check_interval_s, LOST_AFTER_S)):
            try:
                await self.resend_stalled()
                await self.sweep_frames()
            except Exception as error:
                if not (is_infrastructure(error) or isinstance(error, TimeoutError)):
                    raise
                log.warning("stall check failed, trying again later", error=f"{type(error).__name__}: {error}"[:200])
