"""Outbox relay: `main_db.outbox` inserts -> Kafka `outbox_events` (keyed by event id), and the job's
first events on `job_events`: `accepted` (with the job, so a replay rebuilds it), then `sent`.

The relay's own bookkeeping is `relayed_at` (and `sent_to`: where the event went); the job's status
belongs to the API's projector, which moves it `new -> sent` from the events. A deleted outbox document
(a job removed by the API) becomes a `deleted` event: the runner forgets the job. A finished job's
annotated video asked for (`render_pending`, set by the API) becomes a `render` event for the render
workers.

Beside the change stream, a check looks at jobs sent more than STALL_TIMEOUT_S ago that the runner has
not started: one whose event is no longer queued for the runner (gone with an in-memory broker that
restarted, or skipped past) is published again. An event still queued is left alone: a busy queue
only delays a job; and a job the runner started is the runner's to watch over.
"""

import asyncio
import functools
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events import inflight, topics
from events.clients import GroupOffsets, ensure_topics, group_offsets, kafka_producer, mongo_client
from events.contracts import (
    CHECKPOINTS,
    OUTBOX,
    JobEvent,
    JobEventType,
    OutboxDocument,
    OutboxEvent,
    StorageLocation,
    utcnow,
)
from events.crash import crash_point
from events.health import health_app
from events.log import get_logger
from events.retry import transient
from events.runtime import http_server
from events.settings import Settings
from events.statuses import OutboxStatus
from relays.checkpoints import MongoTokenStore
from relays.follow import PublishEvent, Relay, every, job_event_publisher

log = get_logger(__name__)
NAME = "outbox-relay"
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$in": ["insert", "delete"]}},
                {"operationType": "update", "updateDescription.updatedFields.render_pending": True},
            ]
        }
    }
]
PENDING = {"status": OutboxStatus.NEW.value, "relayed_at": None}
RENDER_PENDING = {"render_pending": True}
LOST_AFTER_S = 5  # an event sent this long ago that the broker no longer holds is sent again


def publisher(outbox: AsyncCollection, producer: AIOKafkaProducer, publish_event: PublishEvent, topic: str):
    """Handles a new outbox document: `accepted`, the job's event on `topic` (`outbox_events`), `sent`."""

    @transient
    async def mark(event_id: str, update: dict[str, Any]) -> None:
        # not conditional on the status: the projector may have moved it on from the events already
        await outbox.update_one({"_id": event_id, "relayed_at": None}, {"$set": {**update, "relayed_at": utcnow()}})

    @transient
    async def rendering_published(entry: OutboxDocument) -> None:
        # only the request that was published: one made meanwhile stays pending
        await outbox.update_one({"_id": entry.id, "render_requested_at": entry.render_requested_at},
                                {"$set": {"render_pending": False}})  # fmt: skip

    async def publish(doc: dict[str, Any]) -> None:
        if doc.get("render_pending") and doc.get("relayed_at") is not None:
            entry = OutboxDocument.model_validate(doc)
            video = StorageLocation(bucket=entry.payload.bucket, object=entry.payload.object)
            await publish_event(JobEvent(event_id=entry.id, type=JobEventType.RENDER, render=True, video=video))
            await rendering_published(entry)
            log.info("annotated video asked for, event published", event_id=entry.id)
            return
        with structlog.contextvars.bound_contextvars(event_id=str(doc["_id"])):
            try:
                entry = OutboxDocument.model_validate(doc)
            except ValidationError as error:
                log.error("malformed outbox document", error=str(error))
                reason = "malformed outbox document"
                await publish_event(JobEvent(event_id=str(doc["_id"]), type=JobEventType.FAILED, error=reason))
                await mark(doc["_id"], {})
                return
            await publish_event(JobEvent(event_id=entry.id, type=JobEventType.ACCEPTED, at=entry.created_at,
                                         payload=entry.payload, created_at=entry.created_at,
                                         callback_url=entry.callback_url, file_name=entry.file_name))  # fmt: skip
            sent = await send(producer, topic, entry)
            await publish_event(JobEvent(event_id=entry.id, type=JobEventType.SENT))
            crash_point("after_side_effect")
            await mark(entry.id, {"sent_to": sent})
            log.info("outbox event published")

    return publish


def forgetter(publish_event: PublishEvent):
    async def forget(event_id: Any) -> None:
        await publish_event(JobEvent(event_id=str(event_id), type=JobEventType.DELETED))
        log.info("job deleted, event published", event_id=str(event_id))

    return forget


async def send(producer: AIOKafkaProducer, topic: str, entry: OutboxDocument) -> dict[str, int]:
    """Publish the job's event on `topic` (`outbox_events`); returns where it went, `{partition: offset}`."""
    event = OutboxEvent(event_id=entry.id, payload=entry.payload, created_at=entry.created_at)
    metadata: RecordMetadata = await transient(producer.send_and_wait)(topic, event.to_bytes(), key=entry.id.encode())
    return {str(metadata.partition): metadata.offset}


async def resend_lost(
    outbox: AsyncCollection, producer: AIOKafkaProducer, runner: GroupOffsets, settings: Settings
) -> int:
    """Publish again the events of jobs sent more than STALL_TIMEOUT_S ago that the runner has not
    started, unless the event is still queued for it, and at once (LOST_AFTER_S) those whose event the
    broker no longer holds (it restarted empty). Returns how many were sent again.

    Not queued and not started means lost: gone with a broker that restarted empty, or skipped by a
    runner group whose committed offset moved past it (a consumer of the old broker committing into
    the new one). A job the runner did take is never sent again: the runner creates its document at
    once, which the S3 relay publishes as `started`."""
    now = utcnow()
    committed, ends = await runner.positions()  # before the query: an event sent after it is not taken for lost
    recent = now - timedelta(seconds=min(LOST_AFTER_S, settings.stall_timeout_s))
    unstarted = {"sent_to": {"$ne": None}, "relayed_at": {"$lt": recent}, "started_at": None,
                 "status": {"$in": [OutboxStatus.NEW.value, OutboxStatus.SENT.value]}}  # fmt: skip
    sent_again = 0
    async for doc in outbox.find(unstarted):
        entry = OutboxDocument.model_validate(doc)
        sent_to = entry.sent_to or {}  # never empty here: the query asks for it
        waited = (now - entry.relayed_at).total_seconds() if entry.relayed_at else None
        if not inflight.resend(inflight.where(sent_to, committed, ends), waited, settings.stall_timeout_s):
            continue  # queued for the runner (a busy queue only delays a job), or sent recently: it may take it yet
        with structlog.contextvars.bound_contextvars(event_id=entry.id):
            sent = await send(producer, settings.topic(topics.OUTBOX_EVENTS), entry)
            await outbox.update_one(
                {"_id": entry.id, "relayed_at": entry.relayed_at},
                {"$set": {"relayed_at": utcnow(), "sent_to": sent}, "$inc": {"redeliveries": 1}},
            )
            log.warning("job event lost, sent again", redeliveries=1)
        sent_again += 1
    return sent_again


def build(db: AsyncDatabase, producer: AIOKafkaProducer, settings: Settings) -> Relay:
    publish_event = job_event_publisher(producer, settings.topic(topics.JOB_EVENTS))
    return Relay(
        name=NAME,
        collection=db[OUTBOX],
        pipeline=PIPELINE,
        source_filter={"$or": [PENDING, RENDER_PENDING]},
        handle=publisher(db[OUTBOX], producer, publish_event, settings.topic(topics.OUTBOX_EVENTS)),
        on_delete=forgetter(publish_event),
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    async with (
        mongo_client(**settings.mongo()) as client,
        kafka_producer(settings) as producer,
        group_offsets(settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP) as runner,
    ):
        db = client[settings.main_db]
        relay = build(db, producer, settings)

        lost = functools.partial(resend_lost, db[OUTBOX], producer, runner, settings)
        async with (
            http_server(health_app(relay.name, relay.report), settings.bind_host, settings.outbox_relay_port),
            asyncio.TaskGroup() as group,
        ):
            group.create_task(relay.run(stop))
            group.create_task(every(stop, min(settings.stall_check_interval_s, LOST_AFTER_S), lost, relay.stats))
