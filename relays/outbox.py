"""Outbox relay: `main_db.outbox` inserts -> Kafka `outbox_events` (keyed by event id), then `new -> sent`."""

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from events import topics
from events.clients import ensure_topics, kafka_producer, mongo_client
from events.contracts import CHECKPOINTS, OUTBOX, OutboxDocument, OutboxEvent, utcnow
from events.log import get_logger
from events.retry import transient
from events.settings import Settings
from events.statuses import OutboxStatus
from relays.checkpoints import MongoTokenStore
from relays.follow import Relay

log = get_logger(__name__)
NAME = "outbox-relay"
PIPELINE = [{"$match": {"operationType": "insert"}}]


def publisher(outbox: AsyncCollection, producer: AIOKafkaProducer, settings: Settings):
    topic = settings.topic(topics.OUTBOX_EVENTS)

    @transient
    async def mark(event_id: str, update: dict[str, Any]) -> None:
        await outbox.update_one({"_id": event_id, "status": OutboxStatus.NEW.value}, {"$set": update})

    async def publish(doc: dict[str, Any]) -> None:
        if doc.get("status") != OutboxStatus.NEW:
            return
        with structlog.contextvars.bound_contextvars(event_id=str(doc["_id"])):
            try:
                entry = OutboxDocument.model_validate(doc)
            except ValidationError as error:
                log.error("malformed outbox document", error=str(error))
                await mark(doc["_id"], {"status": OutboxStatus.FAILED.value, "error": "malformed outbox document"})
                return
            event = OutboxEvent(event_id=entry.id, payload=entry.payload, created_at=entry.created_at)
            await transient(producer.send_and_wait)(topic, event.to_bytes(), key=entry.id.encode())
            await mark(entry.id, {"status": OutboxStatus.SENT.value, "sent_at": utcnow()})
            log.info("outbox event published")

    return publish


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
    async with mongo_client(settings.mongo_uri) as client, kafka_producer(settings) as producer:
        await build(client[settings.main_db], producer, settings).run(stop)
