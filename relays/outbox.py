"""Outbox relay: `main_db.outbox` inserts -> Kafka `outbox_events` (keyed by event id), then `new -> sent`;
unfinished `sent` jobs are published again after STALL_TIMEOUT_S."""

import asyncio
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events import topics
from events.clients import ensure_topics, kafka_producer, mongo_client, object_store
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
from events.retry import transient
from events.runtime import http_server, wait_or_stop
from events.settings import Settings
from events.statuses import OutboxStatus
from events.storage import ObjectStore
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
            await send(producer, settings, entry)
            crash_point("after_side_effect")
            await mark(entry.id, {"status": OutboxStatus.SENT.value, "sent_at": utcnow()})
            log.info("outbox event published")

    return publish


async def send(producer: AIOKafkaProducer, settings: Settings, entry: OutboxDocument) -> None:
    event = OutboxEvent(event_id=entry.id, payload=entry.payload, created_at=entry.created_at)
    await transient(producer.send_and_wait)(
        settings.topic(topics.OUTBOX_EVENTS), event.to_bytes(), key=entry.id.encode()
    )


async def redeliver_unfinished(
    outbox: AsyncCollection, producer: AIOKafkaProducer, store: ObjectStore, settings: Settings
) -> int:
    """Publish again the `sent` jobs that have no outcome in storage after STALL_TIMEOUT_S.

    An in-memory broker (Tansu on the local stack) loses what it held when it restarts, so an event
    may be gone before any runner read it. The runner ignores an event for a job it already has, so
    a redelivery costs nothing when the job is merely slow. A job whose outcome is in storage is
    settled instead: `sent -> ready` or `sent -> failed`. Returns how many events were sent again."""
    cutoff = utcnow() - timedelta(seconds=settings.stall_timeout_s)
    sent_again = 0
    async for doc in outbox.find({"status": OutboxStatus.SENT.value, "sent_at": {"$lt": cutoff}}):
        entry = OutboxDocument.model_validate(doc)
        bucket, condition = entry.payload.bucket, {"_id": entry.id, "status": OutboxStatus.SENT.value}
        with structlog.contextvars.bound_contextvars(event_id=entry.id):
            if await store.modified_at(bucket, detection_key(entry.id)):
                await outbox.update_one(condition, {"$set": {"status": OutboxStatus.READY.value}})
            elif await store.modified_at(bucket, failure_key(entry.id)):
                await outbox.update_one(condition, {"$set": {"status": OutboxStatus.FAILED.value}})
            else:
                await send(producer, settings, entry)
                await outbox.update_one(
                    {**condition, "sent_at": entry.sent_at},
                    {"$set": {"sent_at": utcnow()}, "$inc": {"redeliveries": 1}},
                )
                log.warning("unfinished job sent again", redeliveries=1)
                sent_again += 1
    return sent_again


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
    async with mongo_client(settings.mongo_uri) as client, kafka_producer(settings) as producer:
        db = client[settings.main_db]

        relay = build(db, producer, settings)

        async def redeliver() -> None:
            while not await wait_or_stop(stop, settings.stall_check_interval_s):
                relay.stats.redeliveries += await redeliver_unfinished(db[OUTBOX], producer, store, settings)

        async with http_server(health_app(relay), settings.bind_host, settings.outbox_relay_port):
            await asyncio.gather(relay.run(stop), redeliver())
