"""The projector: folds `job_events` into the API's read model, the job documents in `main_db.outbox`.

Events of one job are applied in topic order through the pure state machine (`events.jobstate`); a
duplicate or out-of-order event changes nothing. Each write is conditional on the document's
`version`, so two projectors (a rebalance, a second API instance) never overwrite each other: the
loser reads the document again and applies the events once more, which changes nothing twice.
"""

import asyncio
from collections import defaultdict

from aiokafka.structs import ConsumerRecord

from api.readmodel import ReadModel
from events import metrics, topics
from events.clients import ensure_topics, kafka_consumer, kafka_producer
from events.consume import Item, Loop, parse_with
from events.contracts import JobEvent, JobState
from events.deadletter import dead_letter
from events.jobstate import apply
from events.log import get_logger
from events.retry import transient
from events.runtime import wait_or_stop
from events.settings import Settings
from events.statuses import OutboxStatus

log = get_logger(__name__)
SERVICE = "api-projector"
BATCH = 500
RESTART_WAIT_S = 5
STATE_FIELDS = set(JobState.model_fields) - {"id", "payload", "created_at", "callback_url", "file_name"}


class Projector:
    def __init__(self, jobs: ReadModel) -> None:
        self.jobs = jobs
        metrics.start_at_zero(metrics.JOBS, *({"status": status.value} for status in OutboxStatus))

    async def project(self, events: list[JobEvent]) -> None:
        """Apply a batch: per job, one read and at most one write in the usual case."""
        by_job: dict[str, list[JobEvent]] = defaultdict(list)
        for event in events:
            by_job[event.event_id].append(event)
        for job, batch in by_job.items():
            await self.project_job(job, batch)

    @transient
    async def project_job(self, job: str, events: list[JobEvent]) -> None:
        while True:
            before = await self.jobs.state(job)
            after = before
            for event in events:
                after = apply(after, event)
            if after == before:
                return
            if await self._write(before, after):
                if after is not None and (before is None or before.status != after.status):
                    metrics.JOBS.labels(status=after.status.value).inc()
                return
            log.info("job changed meanwhile, events applied again", event_id=job)

    async def _write(self, before: JobState | None, after: JobState | None) -> bool:
        if after is None:
            assert before is not None
            await self.jobs.remove(before.id)
            return True
        if before is None:  # a replay into an empty read model: `accepted` creates the job
            return await self.jobs.create(after)
        return await self.jobs.move(before, after.model_dump(include=STATE_FIELDS))

    async def handle(self, items: list[Item[JobEvent]]) -> None:
        await self.project([event for _, event in items])


async def run(settings: Settings, projector: Projector, stop: asyncio.Event) -> None:
    """Follow `job_events` until `stop`; the API keeps serving while Kafka is away (it starts again)."""
    while not stop.is_set():
        try:
            await ensure_topics(settings)
            async with (
                kafka_producer(settings) as producer,
                kafka_consumer(settings, topics.JOB_EVENTS, topics.PROJECTOR_GROUP, BATCH) as consumer,
            ):

                async def reject(message: ConsumerRecord, _event: object, error: Exception) -> None:
                    await dead_letter(producer, settings, SERVICE, message, error)

                log.info("projector following job events")
                await Loop(consumer, parse_with(JobEvent.from_bytes), projector.handle, reject, BATCH).run(stop)
        except Exception as error:  # noqa: BLE001 - the API stays up; the projector starts again
            log.error("projector stopped, starting again", error=f"{type(error).__name__}: {error}"[:300])
            await wait_or_stop(stop, RESTART_WAIT_S)
