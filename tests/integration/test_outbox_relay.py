"""The outbox relay against real SecantusDB and Tansu."""

import asyncio
import uuid
from datetime import timedelta

from aiokafka import AIOKafkaProducer, TopicPartition

import relays.outbox
from events import topics
from events.clients import group_offsets, kafka_consumer, kafka_producer
from events.contracts import (
    CHECKPOINTS,
    OUTBOX,
    JobEvent,
    JobEventType,
    OutboxDocument,
    OutboxEvent,
    OutboxPayload,
    utcnow,
)
from events.settings import Settings
from events.statuses import OutboxStatus
from relays.follow import Relay
from relays.outbox import NAME, resend_lost, send
from tests.conftest import eventually, read_topic, serving, sweep_done


def new_event() -> OutboxDocument:
    event_id = str(uuid.uuid4())
    return OutboxDocument(id=event_id, payload=OutboxPayload(bucket="videos", object=f"input/{event_id}.mp4"))


def outbox_relay(db, producer: AIOKafkaProducer, settings: Settings) -> Relay:
    return relays.outbox.build(db, producer, settings)


async def all_sent(outbox, ids) -> bool:
    """The relay's own bookkeeping: published, and where to (the status belongs to the projector)."""
    docs = await outbox.find({"_id": {"$in": ids}}).to_list(None)
    return len(docs) == len(ids) and all(d.get("relayed_at") and d.get("sent_to") for d in docs)


async def test_relay_publishes_old_and_new_events_keyed_by_id_and_marks_them_sent(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    before = [new_event() for _ in range(3)]  # written while no relay ran: found by the start-up sweep
    await db[OUTBOX].insert_many([e.to_mongo() for e in before])
    async with kafka_producer(settings) as producer, serving(outbox_relay(db, producer, settings)) as relay:
        after = [new_event() for _ in range(2)]
        await sweep_done(relay)
        for event in after:
            await db[OUTBOX].insert_one(event.to_mongo())
        ids = [e.id for e in before + after]
        await eventually(lambda: all_sent(db[OUTBOX], ids))
        assert relay.stats.swept == 3
    messages = await read_topic(settings, topics.OUTBOX_EVENTS, 5)
    assert sorted(m.key.decode() for m in messages) == sorted(ids)
    for message in messages:
        sent = OutboxEvent.from_bytes(message.value)
        assert sent.event_id == message.key.decode()
        assert sent.payload.object == f"input/{sent.event_id}.mp4"
    assert await db[CHECKPOINTS].find_one({"_id": NAME}) is not None
    # each job's first events, in order: accepted (with the job, for a replay), then sent
    job_events = [JobEvent.from_bytes(m.value) for m in await read_topic(settings, topics.JOB_EVENTS, 10)]
    for event_id in ids:
        mine = [e for e in job_events if e.event_id == event_id]
        assert [e.type for e in mine] == [JobEventType.ACCEPTED, JobEventType.SENT]
        assert mine[0].payload.object == f"input/{event_id}.mp4" and mine[0].created_at is not None
    assert all(doc["status"] == "new" for doc in await db[OUTBOX].find().to_list(None))  # the projector's to move


async def test_a_deleted_job_becomes_a_deleted_event(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    async with kafka_producer(settings) as producer, serving(outbox_relay(db, producer, settings)):
        job = new_event()
        await db[OUTBOX].insert_one(job.to_mongo())
        await eventually(lambda: all_sent(db[OUTBOX], [job.id]))
        await db[OUTBOX].delete_one({"_id": job.id})
        messages = await read_topic(settings, topics.JOB_EVENTS, 3)
    assert [JobEvent.from_bytes(m.value).type for m in messages] == ["accepted", "sent", "deleted"]


async def test_relay_resumes_from_its_token_after_a_restart(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    async with kafka_producer(settings) as producer:
        async with serving(outbox_relay(db, producer, settings)):
            first = new_event()
            await db[OUTBOX].insert_one(first.to_mongo())
            await eventually(lambda: all_sent(db[OUTBOX], [first.id]))
            # the token is saved after the change (or at the next checkpoint, if the sweep took it first)
            token = (await eventually(lambda: db[CHECKPOINTS].find_one({"_id": NAME})))["token"]
        second = new_event()
        await db[OUTBOX].insert_one(second.to_mongo())  # while the relay is down
        async with serving(outbox_relay(db, producer, settings)) as relay:
            await eventually(lambda: all_sent(db[OUTBOX], [second.id]))
            # the stream resumed at the stored token, so it replays the insert made while down
            await eventually(lambda: asyncio.sleep(0, relay.stats.changes >= 1))
        assert (await db[CHECKPOINTS].find_one({"_id": NAME}))["token"] != token
    messages = await read_topic(settings, topics.OUTBOX_EVENTS, 2)
    assert sorted(m.key.decode() for m in messages) == sorted([first.id, second.id])  # no duplicate


async def test_a_quiet_relay_still_advances_its_stored_token(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    async with kafka_producer(settings) as producer, serving(outbox_relay(db, producer, settings)):
        first = await eventually(lambda: db[CHECKPOINTS].find_one({"_id": NAME}), timeout=15)
        # no write at all: the server's no-op heartbeat moves the stream's post-batch token on
        moved = await eventually(
            lambda: db[CHECKPOINTS].find_one({"_id": NAME, "token": {"$ne": first["token"]}}), timeout=15
        )
    assert moved["updated_at"] > first["updated_at"]


async def test_only_events_no_longer_queued_for_an_unstarted_job_are_sent_again(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    lost, skipped, queued, started, finished = (new_event() for _ in range(5))
    long_ago = utcnow() - timedelta(seconds=settings.stall_timeout_s + 60)
    async with kafka_producer(settings) as producer:
        topic = settings.topic(topics.OUTBOX_EVENTS)
        past = await send(producer, topic, skipped)  # the runner group committed past it, never started it
        where = await send(producer, topic, queued)  # still waiting for the runner in the topic
        gone = {partition: offset + 1000 for partition, offset in where.items()}  # the broker restarted empty
        sent_to = {lost.id: gone, skipped.id: past, queued.id: where, started.id: gone, finished.id: gone}
        for event in (lost, skipped, queued, started, finished):
            event.status, event.relayed_at = OutboxStatus.SENT, long_ago
            doc = event.to_mongo() | {"sent_to": sent_to[event.id]}
            if event is started:  # the runner has it: the runner watches over it
                doc["started_at"] = long_ago
            if event is finished:
                doc["status"] = "ready"
            await db[OUTBOX].insert_one(doc)
        ((partition, offset),) = past.items()
        async with kafka_consumer(settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP) as runner_group:
            await eventually(lambda: asyncio.sleep(0, runner_group.assignment()))  # joined the group
            tp = TopicPartition(settings.topic(topics.OUTBOX_EVENTS), int(partition))
            await runner_group.commit({tp: offset + 1})
        async with group_offsets(settings, topics.OUTBOX_EVENTS, topics.RUNNER_JOBS_GROUP) as runner:
            assert await resend_lost(db[OUTBOX], producer, runner, settings) == 2
            assert await resend_lost(db[OUTBOX], producer, runner, settings) == 0  # queued now
    messages = await read_topic(settings, topics.OUTBOX_EVENTS, 4)
    assert sorted(m.key.decode() for m in messages) == sorted([skipped.id, queued.id, skipped.id, lost.id])
    statuses = {doc["_id"]: doc for doc in await db[OUTBOX].find().to_list(None)}
    assert statuses[lost.id]["redeliveries"] == 1 and statuses[skipped.id]["redeliveries"] == 1
    assert all("redeliveries" not in statuses[e.id] for e in (queued, started, finished))


async def test_two_relays_at_once_change_each_status_once_and_lose_nothing(settings, mongo, kafka_topics):
    db = mongo[settings.main_db]
    events = [new_event() for _ in range(20)]
    ids = [e.id for e in events]
    pipeline = [
        {"$match": {"operationType": "update", "updateDescription.updatedFields.relayed_at": {"$exists": True}}}
    ]
    async with await db[OUTBOX].watch(pipeline, max_await_time_ms=200) as changes:
        async with (
            kafka_producer(settings) as producer,
            serving(outbox_relay(db, producer, settings)) as first,
            serving(outbox_relay(db, producer, settings)) as second,
        ):
            await sweep_done(first, second)
            await db[OUTBOX].insert_many([e.to_mongo() for e in events[:10]])
            for event in events[10:]:
                await db[OUTBOX].insert_one(event.to_mongo())
            await eventually(lambda: all_sent(db[OUTBOX], ids))
        updates: list[str] = []
        while (change := await changes.try_next()) is not None:
            updates.append(change["documentKey"]["_id"])
    assert sorted(updates) == sorted(ids)  # marked sent exactly once per event, whichever relay won
    published = {m.key.decode() for m in await read_topic(settings, topics.OUTBOX_EVENTS, len(ids))}
    assert published == set(ids)
