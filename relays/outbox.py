"""Outbox relay: `main_db.outbox` inserts -> Kafka `outbox_events` (keyed by event id), then `new -> sent`.

Beside the change stream, a settle loop looks at `sent` jobs older than STALL_TIMEOUT_S: one whose
outcome is in storage is settled (`sent -> ready` or `sent -> failed`); one whose bucket storage
refuses for good fails with the reason; one whose event is gone from the broker (an in-memory broker
restarted) is published again. An event still queued for the runner, or already taken by it, is
left alone: a busy queue only delays a job, and the runner watches over the jobs it has.
"""

import asyncio
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events import topics
from events.clients import GroupOffsets, ensure_topics, group_offsets, kafka_producer, mongo_client, object_store
from events.contracts import (
    CHECKPOINTS,
    OUTBOX,
    OutboxDocument,
    OutboxEvent,
    detection_key,
    failure_key,
    utcnow,
)
from events.crash import crash_point
from events.log import get_logger
from events.retry import is_infrastructure, transient
from events.runtime import http_server, wait_or_stop
from events.settings import Settings
from events.statuses import OutboxStatus
from events.storage import ObjectStore, PermanentStorageError
from relays.checkpoints import MongoTokenStore
from relays.follow import Relay, health_app

log = get_logger(__name__)
NAME = "outbox-relay"
PIPELINE = [{"$match": {"operationType": "insert"}}]


def publisher(outbox: AsyncCollection, producer: AIOKafkaProducer, settings: Settings):
    @transient
    async def mark(event_id: str, update: dict[str, Any]) -> None:
        await outbox.update_one({"_id": event_id, "status": OutboxStatus.NEW.value}, {"$set": update})

    async def publish(doc: dict[str, Any]) -> None:
        with structlog.contextvars.bound_contextvars(event_id=str(doc["_id"])):
            try:
                entry = OutboxDocument.model_validate(doc)
            except ValidationError as error:
                log.error("malformed outbox document", error=str(error))
                await mark(doc["_id"], {"status": OutboxStatus.FAILED.value, "error": "malformed outbox document"})
                return
            sent = await send(producer, settings, entry)
            crash_point("after_side_effect")
            await mark(entry.id, {"status": OutboxStatus.SENT.value, "sent_at": utcnow(), "sent_to": sent})
            log.info("outbox event published")

    return publish


async def send(producer: AIOKafkaProducer, settings: Settings, entry: OutboxDocument) -> dict[str, int]:
    """Publish the job's event; returns where it went, `{partition: offset}`."""
    event = OutboxEvent(event_id=entry.id, payload=entry.payload, created_at=entry.created_at)
    metadata: RecordMetadata = await transient(producer.send_and_wait)(
        settings.topic(topics.OUTBOX_EVENTS), event.to_bytes(), key=entry.id.encode()
    )
    return {str(metadata.partition): metadata.offset}


async def settle_unfinished(
    outbox: AsyncCollection, producer: AIOKafkaProducer, store: ObjectStore, runner: GroupOffsets, settings: Settings
) -> int:
    """Settle the `sent` jobs older than STALL_TIMEOUT_S whose outcome is in storage, fail those whose
    storage refuses for good, and publish again those whose event the broker lost. Returns how many
    events were sent again."""
    cutoff = utcnow() - timedelta(seconds=settings.stall_timeout_s)
    ends = await runner.ends()
    sent_again = 0
    async for doc in outbox.find({"status": OutboxStatus.SENT.value, "sent_at": {"$lt": cutoff}}):
        entry = OutboxDocument.model_validate(doc)
        bucket, condition = entry.payload.bucket, {"_id": entry.id, "status": OutboxStatus.SENT.value}
        with structlog.contextvars.bound_contextvars(event_id=entry.id):
            try:
                if await transient(store.modified_at)(bucket, detection_key(entry.id)):
                    await outbox.update_one(condition, {"$set": {"status": OutboxStatus.READY.value}})
                    continue
                if await transient(store.modified_at)(bucket, failure_key(entry.id)):
                    await outbox.update_one(condition, {"$set": {"status": OutboxStatus.FAILED.value}})
                    continue
            except PermanentStorageError as error:
                reason = f"the job's storage cannot be used: {error}"
                await outbox.update_one(condition, {"$set": {"status": OutboxStatus.FAILED.value, "error": reason}})
                log.error("job failed: storage refuses its bucket", error=str(error))
                continue
            where = doc.get("sent_to") or {}
            if where and not lost(where, ends):
                continue  # queued for the runner, or taken by it: the runner watches over it
            sent = await send(producer, settings, entry)
            await outbox.update_one(
                {**condition, "sent_at": entry.sent_at},
                {"$set": {"sent_at": utcnow(), "sent_to": sent}, "$inc": {"redeliveries": 1}},
            )
            log.warning("job event lost by the broker, sent again", redeliveries=1)
            sent_again += 1
    return sent_again


def lost(where: dict[str, int], ends: dict[int, int]) -> bool:
    """The event is no longer in the topic: its offset is at or past the partition's end (a broker
    that keeps its topics in memory restarted). Not lost: still queued, or consumed by the runner."""
    return any(offset >= ends.get(int(partition), 0) for partition, offset in where.items())


def build(db: AsyncDatabase, producer: AIOKafkaProducer, settings: Settings) -> Relay:
    return Relay(
        name=NAME,
        collection=db[OUTBOX],
        pipeline=PIPELINE,
        source_filter={"status": OutboxStatus.NEW.value},
        handle=publisher(db[OUTBOX], producer, settings),
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    store = object_store(settings)
    async with (
        mongo_client(settings.mongo_uri) as client,
        kafka_producer(settings) as producer,
        group_offsets(settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP) as runner,
    ):
        db = client[settings.main_db]
        relay = build(db, producer, settings)

        async def settle() -> None:
            while not await wait_or_stop(stop, settings.stall_check_interval_s):
                try:
                    relay.stats.redeliveries += await settle_unfinished(db[OUTBOX], producer, store, runner, settings)
                except Exception as error:
                    if not is_infrastructure(error):
                        raise
                    log.warning("settling unfinished jobs failed, trying again later", error=str(error)[:200])

        async with (
            http_server(health_app(relay), settings.bind_host, settings.outbox_relay_port),
            asyncio.TaskGroup() as group,
        ):
            group.create_task(relay.run(stop))
            group.create_task(settle())
