"""The webhook relay against real SecantusDB and a real HTTP receiver started by the test."""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

import relays.webhooks
from events import webhooks
from events.contracts import OUTBOX, OutboxDocument, OutboxPayload
from events.statuses import OutboxStatus
from tests.conftest import counted, eventually, relay, serving
from vdetect.testing import Receiver, webhook_receiver

SECRET = "whsec-test"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver(SECRET) as running:
        yield running


@pytest.fixture
def hook_settings(settings):
    return settings.model_copy(
        update={"webhook_secret": SecretStr(SECRET), "webhook_allow_private": True, "webhook_backoff_s": 0.2}
    )


def ended_job(receiver: Receiver, status: OutboxStatus = OutboxStatus.READY, error: str | None = None) -> dict:
    event_id = str(uuid.uuid4())
    doc = OutboxDocument(
        id=event_id,
        payload=OutboxPayload(bucket="videos", object=f"input/{event_id}.mp4"),
        callback_url=receiver.url(event_id),
        webhook=webhooks.PENDING,
        status=status,
        error=error,
    )
    doc.finished_at = doc.created_at + timedelta(seconds=12.5)
    return doc.to_mongo()


async def test_a_signed_webhook_is_retried_with_back_off_under_one_delivery_id(hook_settings, mongo, receiver):
    db = mongo[hook_settings.main_db]
    flaky, failed = ended_job(receiver), ended_job(receiver, OutboxStatus.FAILED, "not a video")
    receiver.script[flaky["_id"]] = [500, 500]  # then 200
    async with httpx.AsyncClient(timeout=5) as http:
        deliveries = relays.webhooks.Deliveries(db[OUTBOX], http, hook_settings)
        async with serving(relays.webhooks.build(db, deliveries, hook_settings)):
            await db[OUTBOX].insert_one(flaky)  # a job that is already over, seen on the change stream
            await db[OUTBOX].insert_one({**failed, "status": "sent"})
            await db[OUTBOX].update_one({"_id": failed["_id"]}, {"$set": {"status": "failed"}})  # it ends later
            await eventually(lambda: asyncio.sleep(0, receiver.delivered() == {flaky["_id"], failed["_id"]}))
            await eventually(lambda: db[OUTBOX].count_documents({"webhook": "delivered"}))
    tries = receiver.attempts()
    assert [t["code"] for t in tries[flaky["_id"]]] == [500, 500, 200]
    assert len({t["delivery"] for t in tries[flaky["_id"]]}) == 1  # one delivery, three attempts
    assert all(t["signed"] for attempts in tries.values() for t in attempts)  # the signature verifies
    body = tries[failed["_id"]][0]["body"]
    assert body == {"event_id": failed["_id"], "status": "failed", "error": "not a video",
                    "processing_time_seconds": 12.5,
                    "result_url": f"{hook_settings.public_url}/api/result_video/{failed['_id']}"}  # fmt: skip
    assert tries[flaky["_id"]][0]["body"]["error"] is None
    doc = await db[OUTBOX].find_one({"_id": flaky["_id"]})
    assert doc["webhook"] == "delivered" and doc["webhook_attempts"] == 3 and doc["webhook_last"] == "HTTP 200"


async def test_a_receiver_that_always_fails_is_given_up_after_max_attempts(hook_settings, mongo, receiver):
    db = mongo[hook_settings.main_db]
    settings = hook_settings.model_copy(update={"webhook_max_attempts": 3, "webhook_backoff_s": 0.05})
    job = ended_job(receiver)
    receiver.script[job["_id"]] = [503] * 10
    async with httpx.AsyncClient(timeout=5) as http:
        deliveries = relays.webhooks.Deliveries(db[OUTBOX], http, settings)
        async with serving(relays.webhooks.build(db, deliveries, settings)):
            await db[OUTBOX].insert_one(job)
            doc = await eventually(lambda: db[OUTBOX].find_one({"_id": job["_id"], "webhook": "failed"}))
    assert doc["webhook_attempts"] == 3 and len(receiver.attempts()[job["_id"]]) == 3


async def test_every_webhook_arrives_although_the_relay_is_killed_mid_run(hook_settings, mongo, receiver, tmp_path):
    db = mongo[hook_settings.main_db]
    jobs = [ended_job(receiver) for _ in range(12)]
    for job in jobs:
        receiver.script[job["_id"]] = [500]  # every delivery needs a retry
    receiver.delay_s = 0.05
    env = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_S": "0.5"}
    await db[OUTBOX].insert_many(jobs[:6])  # found by the start-up sweep
    with relay("webhook-relay", hook_settings, tmp_path / "relay.log", **env) as first:
        await db[OUTBOX].insert_many(jobs[6:])  # seen on the change stream (or by the sweep)
        await eventually(lambda: asyncio.sleep(0, len(receiver.received) >= 4), timeout=60)
        first.process.kill()  # SIGKILL: deliveries in flight, retries pending
        assert await first.died() == -9
    assert len(receiver.delivered()) < len(jobs)
    with relay("webhook-relay", hook_settings, tmp_path / "relay.log", **env):
        await eventually(lambda: asyncio.sleep(0, len(receiver.delivered()) == len(jobs)), timeout=60)
        await eventually(lambda: counted(db[OUTBOX], {"webhook": "delivered"}, len(jobs)))
    for job in jobs:  # one delivery id per job across both processes
        assert len({t["delivery"] for t in receiver.attempts()[job["_id"]]}) == 1
    assert all(t["signed"] for t in receiver.received)
