"""Crash recovery of the relays, run as real processes against real SecantusDB and Tansu.

Each relay is SIGKILLed at a crash point (driven by VDETECT_CRASH_AT, set only here), started again,
and then every event must be published at least once, every status must change exactly once, and
every job must have exactly one detection file.
"""

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection

from events import topics
from events.clients import mongo_client, object_store
from events.contracts import CHECKPOINTS, OUTBOX, PREDICTIONS, OutboxDocument, OutboxPayload, RunnerPrediction
from events.statuses import RunnerStatus
from tests.conftest import RelayProcess, counted, eventually, mongo_uri, read_topic, relay
from tests.servers import Server, running, secantus

CRASH_POINTS = ["after_side_effect", "before_checkpoint", "after_side_effect:3"]  # the last: mid-batch


@asynccontextmanager
async def status_changes(collection: AsyncCollection, field: str = "status") -> AsyncIterator[Counter]:
    """Count, per document and value, every update that sets `field`, for the length of the block
    (a value that is not a string, such as a time, counts as "set")."""
    counts: Counter = Counter()
    pipeline = [{"$match": {"operationType": "update", f"updateDescription.updatedFields.{field}": {"$exists": True}}}]
    async with await collection.watch(pipeline, max_await_time_ms=200) as stream:

        async def follow() -> None:
            while True:
                change = await stream.try_next()
                if change:
                    value = change["updateDescription"]["updatedFields"][field]
                    counts[(change["documentKey"]["_id"], value if isinstance(value, str) else "set")] += 1

        task = asyncio.create_task(follow())
        try:
            yield counts
        finally:
            await asyncio.sleep(1)  # let the last changes arrive
            task.cancel()


RELAYED = {"relayed_at": {"$ne": None}, "sent_to": {"$ne": None}}  # published by the outbox relay


def new_event() -> dict:
    event_id = str(uuid.uuid4())
    return OutboxDocument(
        id=event_id, payload=OutboxPayload(bucket="videos", object=f"input/{event_id}.mp4")
    ).to_mongo()


async def following(db, process: RelayProcess) -> None:
    """Wait until the relay follows its stream (it saved a first token) or died at its crash point."""

    async def check():
        return process.process.poll() is not None or await db[CHECKPOINTS].find_one({"_id": process.kind})

    await eventually(check, timeout=60)


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
async def test_outbox_relay_killed_at_a_crash_point_loses_nothing(settings, mongo, kafka_topics, tmp_path, crash_at):
    outbox = mongo[settings.main_db][OUTBOX]
    early, late = [new_event() for _ in range(2)], [new_event() for _ in range(3)]
    ids = [e["_id"] for e in early + late]
    async with status_changes(outbox, "relayed_at") as changes:  # the relay's mark: the status is the projector's
        await outbox.insert_many(early)  # found by the start-up sweep
        with relay("outbox-relay", settings, tmp_path / "relay.log", crash_at) as crashing:
            await following(mongo[settings.main_db], crashing)
            for event in late:  # seen on the change stream
                await outbox.insert_one(event)
            assert await crashing.died() == -signal.SIGKILL
        with relay("outbox-relay", settings, tmp_path / "relay.log"):
            await eventually(lambda: counted(outbox, {"_id": {"$in": ids}, **RELAYED}, len(ids)))
    published = Counter(m.key.decode() for m in await read_topic(settings, topics.OUTBOX_EVENTS, len(ids)))
    assert set(published) == set(ids)  # every event at least once
    assert dict(changes) == {(i, "set"): 1 for i in ids}  # marked once each


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
async def test_s3_relay_killed_at_a_crash_point_writes_each_file_once(settings, mongo, tmp_path, crash_at):
    predictions = mongo[settings.runner_db][PREDICTIONS]
    jobs = [
        RunnerPrediction(id=str(uuid.uuid4()), bucket="videos", total_frames=0, status=RunnerStatus.PROCESSING)
        for _ in range(5)
    ]
    ids = [job.id for job in jobs]
    await predictions.insert_many([job.to_mongo() for job in jobs])
    await object_store(settings).ensure_bucket("videos")
    log = tmp_path / "relay.log"
    async with status_changes(predictions) as changes:
        await predictions.update_many({"_id": {"$in": ids[:2]}}, {"$set": {"status": "predictable"}})
        with relay("s3-relay", settings, log, crash_at) as crashing:
            await following(mongo[settings.runner_db], crashing)
            for event_id in ids[2:]:
                await predictions.update_one({"_id": event_id}, {"$set": {"status": "predictable"}})
            assert await crashing.died() == -signal.SIGKILL
        with relay("s3-relay", settings, log) as restarted:
            await eventually(lambda: counted(predictions, {"_id": {"$in": ids}, "status": "ready"}, 5))
    written = Counter(line["event_id"] for line in restarted.lines() if line.get("event") == "job outcome written")
    assert written == dict.fromkeys(ids, 1)
    assert {key: n for key, n in changes.items() if key[1] == "ready"} == {(i, "ready"): 1 for i in ids}
    store = object_store(settings)
    assert len(await store.list_prefix("videos", "detection/")) == 5


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[Server]:
    """A SecantusDB of the test's own, to restart."""
    with running(secantus(tmp_path / "own")) as started:
        yield started


async def test_relay_resumes_from_its_token_across_a_database_restart(settings, kafka_topics, own_mongo, tmp_path):
    settings = settings.model_copy(update={"mongo_uri": SecretStr(mongo_uri(own_mongo))})
    first, second = [new_event() for _ in range(2)], [new_event() for _ in range(2)]
    with relay("outbox-relay", settings, tmp_path / "relay.log") as process:
        async with mongo_client(**settings.mongo()) as client:
            outbox = client[settings.main_db][OUTBOX]
            await outbox.insert_many(first)
            await eventually(lambda: counted(outbox, RELAYED, 2))
        own_mongo.restart()
        async with mongo_client(**settings.mongo()) as client:
            outbox = client[settings.main_db][OUTBOX]
            await outbox.insert_many(second)
            await eventually(lambda: counted(outbox, RELAYED, 4), timeout=60)
        assert process.process.poll() is None  # it rode out the restart
    # the stream picked up again where it was (by its own resume, or reopened from the stored token)
    published = Counter(m.key.decode() for m in await read_topic(settings, topics.OUTBOX_EVENTS, 4))
    assert published == dict.fromkeys((e["_id"] for e in first + second), 1)


@pytest.mark.parametrize("damage", ["corrupted", "history-lost"])
async def test_an_unusable_token_is_recovered_by_a_sweep_with_no_loss(
    settings, kafka_topics, own_mongo, tmp_path, damage
):
    settings = settings.model_copy(update={"mongo_uri": SecretStr(mongo_uri(own_mongo))})
    log = tmp_path / "relay.log"
    async with mongo_client(**settings.mongo()) as client:
        db = client[settings.main_db]
        with relay("outbox-relay", settings, log) as first:
            await following(db, first)
        token = (await db[CHECKPOINTS].find_one({"_id": "outbox-relay"}))["token"]["_data"]
        # corrupted: not a token at all; history lost: a well-formed token from before the oplog's start
        damaged = "not-a-token" if damage == "corrupted" else token[:12] + "00000000" + token[20:]
        await db[CHECKPOINTS].update_one({"_id": "outbox-relay"}, {"$set": {"token": {"_data": damaged}}})
        missed = [new_event() for _ in range(40)]  # written while no relay runs
        await db[OUTBOX].insert_many(missed)
        with relay("outbox-relay", settings, log) as process:
            await eventually(lambda: counted(db[OUTBOX], RELAYED, 40), timeout=60)
    refused = [line for line in process.lines() if line.get("event") == "resume token refused, reconciling by sweep"]
    assert refused and refused[0]["tokens_lost"] == 1 and refused[0]["level"] == "error"
    assert refused[0]["code"] == (9 if damage == "corrupted" else 286)  # FailedToParse / ChangeStreamHistoryLost
    published = await read_topic(settings, topics.OUTBOX_EVENTS, 40)
    assert {m.key.decode() for m in published} == {e["_id"] for e in missed}
