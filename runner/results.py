"""The runner's result store: results from `inference_results` become frame documents, and a job whose
frames are all stored becomes predictable."""

from collections import defaultdict
from dataclasses import dataclass

import structlog

from events import metrics
from events.consume import Item
from events.contracts import InferenceResult
from events.log import get_logger
from runner.jobs import Jobs
from runner.lifecycle import Lifecycle, Stats
from runner.publish import Flow

log = get_logger(__name__)


@dataclass
class ResultStore:
    jobs: Jobs
    lifecycle: Lifecycle
    stats: Stats
    flows: dict[str, Flow]  # the fan-outs under way (FanOut.flows): a stored result makes room in its job's

    def __post_init__(self) -> None:
        metrics.start_at_zero(metrics.FRAMES, {"stage": "stored"})

    async def store(self, results: list[InferenceResult]) -> None:
        """Store a batch of results: one write of every job's frames, then one of each job's counter;
        redelivered frames change nothing."""
        by_job: dict[str, list[InferenceResult]] = defaultdict(list)
        for result in results:
            by_job[result.event_id].append(result)
        recorded = await self.jobs.record(by_job)
        for event_id, batch in by_job.items():
            with structlog.contextvars.bound_contextvars(event_id=event_id):
                job, stored = recorded[event_id]
                frames = [result.frame for result in batch]
                if self.lifecycle.frames is not None:
                    self.lifecycle.frames.discard(event_id, frames)
                if (flow := self.flows.get(event_id)) is not None:
                    flow.done(frames, stored)  # room for more of its frames
                self.stats.results_stored += stored
                metrics.FRAMES.labels(stage="stored").inc(stored)
                self.stats.duplicate_results += len(batch) - stored
                if stored < len(batch):
                    log.debug("results ignored: duplicates or job over", ignored=len(batch) - stored)
                if job is not None and job.is_complete():
                    await self.lifecycle.complete(job)

    async def store_items(self, items: list[Item[InferenceResult]]) -> None:
        await self.store([result for _, result in items])
