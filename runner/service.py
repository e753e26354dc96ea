"""The runner: jobs from `outbox_events` fan out to `inference_tasks` (`runner.fanout`); `inference_results`
are stored (`runner.results`); a job whose frames were lost is resent them (`runner.watchdog`); a job
deleted by the API is forgotten. This module wires the parts to Kafka and MongoDB."""

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from events import topics
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
from events.contracts import FRAMES, PREDICTIONS, InferenceResult, JobEvent, JobEventType, OutboxEvent
from events.deadletter import dead_letter
from events.framestore import frame_store
from events.health import counters, health_app
from events.indexes import RUNNER_DB, ensure_indexes
from events.log import get_logger
from events.runtime import http_server, startup_deadline
from events.settings import Settings
from events.storage import ObjectStore
from runner.fanout import FanOut
from runner.jobs import Jobs
from runner.lifecycle import Lifecycle, Stats
from runner.publish import Publisher
from runner.results import ResultStore
from runner.watchdog import StallWatch

log = get_logger(__name__)
SERVICE = "runner"
JOB_POLL_INTERVAL_MS = 60 * 60 * 1000  # the jobs loop may wait long for a free fan-out slot


@dataclass
class Runner:
    """The runner's parts, sharing one job store and one set of counters."""

    jobs: Jobs
    producer: AIOKafkaProducer
    settings: Settings
    stats: Stats
    fan_outs: FanOut
    results: ResultStore
    stalls: StallWatch

    @classmethod
    def build(
        cls, jobs: Jobs, store: ObjectStore, producer: AIOKafkaProducer, pool: Executor, settings: Settings,
        tasks: GroupOffsets, results: GroupOffsets | None = None,
    ) -> "Runner":  # fmt: skip
        stats = Stats()
        frames = frame_store(settings.frame_store_dir, settings.frame_store_max_mb)
        lifecycle = Lifecycle(jobs, stats, frames)
        publisher = Publisher(jobs, producer, pool, settings, stats, frames=frames)
        fan_outs = FanOut(jobs, store, publisher, settings.runner_active_jobs, lifecycle, stats)
        return cls(jobs, producer, settings, stats, fan_outs, ResultStore(jobs, lifecycle, stats, fan_outs.flows),
                   StallWatch(jobs, fan_outs, settings, stats, tasks, results))  # fmt: skip

    async def start_jobs(self, items: list[Item[OutboxEvent]]) -> None:
        for _, event in items:
            with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                await self.fan_outs.start_job(event)

    async def reject_job(self, message: ConsumerRecord, event: OutboxEvent | None, error: Exception) -> None:
        """An outbox event that could not be handled: dead-lettered, and its job fails with the reason."""
        await self.dead_letter(message, event, error)
        if event is not None:
            await self.fan_outs.lifecycle.fail(
                event.event_id, f"the job could not be started: {type(error).__name__}: {error}"
            )

    async def forget_deleted(self, items: list[Item[JobEvent]]) -> None:
        """`deleted` job events: the API removed the job, the runner forgets it too."""
        for _, event in items:
            if event.type == JobEventType.DELETED:
                await self.jobs.forget(event.event_id)
                self.fan_outs.lifecycle.over(event.event_id)
                self.stalls.taken_at.pop(event.event_id, None)
                log.info("job deleted, forgotten", event_id=event.event_id)

    async def dead_letter(self, message: ConsumerRecord, _parsed: object, error: Exception) -> None:
        await dead_letter(self.producer, self.settings, SERVICE, message, error)
        self.stats.dead_letters += 1


async def main(settings: Settings, stop: asyncio.Event) -> None:
    deadline = startup_deadline()
    await ensure_topics(settings)
    # JPEG encoding (FRAME_ENCODING=jpeg) in threads: OpenCV lets go of the GIL; raw frames need none
    with ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="encode") as pool:
        async with (
            mongo_client(**settings.mongo(runner=True)) as client,
            kafka_producer(settings) as producer,
            kafka_consumer(
                settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP, 1, max_poll_interval_ms=JOB_POLL_INTERVAL_MS
            ) as jobs_consumer,
            kafka_consumer(settings, topics.INFERENCE_RESULTS, topics.RUNNER_RESULTS_GROUP, 500) as results_consumer,
            kafka_consumer(
                settings, topics.JOB_EVENTS, topics.RUNNER_CLEANUP_GROUP, 500, quiet=True
            ) as events_consumer,
            group_offsets(settings, topics.INFERENCE_TASKS, topics.INFERENCE_GROUP) as tasks,
            group_offsets(settings, topics.INFERENCE_RESULTS, topics.RUNNER_RESULTS_GROUP) as results,
        ):
            db = client[settings.runner_db]
            await ensure_indexes(db, RUNNER_DB)
            runner = Runner.build(Jobs(db[PREDICTIONS], db[FRAMES]), object_store(settings), producer, pool, settings,
                                  tasks, results)  # fmt: skip
            loops: list[Loop[Any]] = [
                Loop(jobs_consumer, parse_with(OutboxEvent.from_bytes), runner.start_jobs, runner.reject_job, 1),
                Loop(results_consumer, parse_with(InferenceResult.from_bytes), runner.results.store_items,
                     runner.dead_letter, 500, linger_ms=settings.runner_results_wait_ms),
                Loop(events_consumer, parse_with(JobEvent.from_bytes), runner.forget_deleted, runner.dead_letter, 500),
            ]  # fmt: skip

            def report() -> dict[str, Any]:  # ready: it has joined the groups of jobs, results and deletions
                return {"ready": all(loop.joined for loop in loops), **counters(runner.stats)}

            async with http_server(health_app(SERVICE, report), settings.bind_host, settings.runner_port):
                log.info("runner ready")
                deadline.cancel()
                async with asyncio.TaskGroup() as group:
                    group.create_task(runner.fan_outs.run(stop))
                    for loop in loops:
                        group.create_task(loop.run(stop))
                    group.create_task(runner.stalls.run(stop))
