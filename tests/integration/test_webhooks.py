"""The webhook relay against real SecantusDB and a real HTTP receiver started by the test."""

import asyncio
import contextlib
import resource
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr

import relays.webhooks
from events import webhooks
from events.contracts import OUTBOX, OutboxDocument, OutboxPayload
from events.statuses import OutboxStatus
from tests import hostile
from tests.conftest import counted, eventually, relay, serving
from tests.harness import Receiver, webhook_receiver

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


@contextlib.asynccontextmanager
async def hostile_receiver(kind: str) -> AsyncIterator[str]:
    """`tests.hostile.webhook_receiver` while the test runs; yields its URL prefix."""
    server = await hostile.webhook_receiver(kind)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook/"
    finally:
        server.close()


async def test_receivers_that_drip_or_flood_cost_one_attempt_each_and_never_the_relay(hook_settings, mongo, receiver):
    """32 receivers dripping their answers held every delivery slot for good; a 600 MB answer was read
    into the relay's memory. Now an attempt has one deadline and the answer's body is never read."""
    db = mongo[hook_settings.main_db]
    settings = hook_settings.model_copy(update={"webhook_timeout_s": 2, "webhook_max_attempts": 1})
    async with (
        hostile_receiver("drip-headers") as dripping,
        hostile_receiver("drip-body") as slow_body,
        hostile_receiver("big-body") as flood,
        httpx.AsyncClient(timeout=5) as http,
    ):
        drippers = [ended_job(receiver) for _ in range(relays.webhooks.CONCURRENT_DELIVERIES + 8)]
        for job in drippers:
            job["callback_url"] = dripping + job["_id"]
        answered = [{**ended_job(receiver), "callback_url": prefix + "x"} for prefix in (slow_body, flood)]
        good = ended_job(receiver)
        deliveries = relays.webhooks.Deliveries(db[OUTBOX], http, settings)
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        async with serving(relays.webhooks.build(db, deliveries, settings)):
            await db[OUTBOX].insert_many(drippers)
            await eventually(lambda: asyncio.sleep(0, len(deliveries.running) >= len(drippers)))
            await db[OUTBOX].insert_many([*answered, good])
            started = asyncio.get_running_loop().time()
            await eventually(lambda: asyncio.sleep(0, good["_id"] in receiver.delivered()), timeout=30)
            waited = asyncio.get_running_loop().time() - started
            await eventually(lambda: counted(db[OUTBOX], {"webhook": {"$ne": webhooks.PENDING}}, len(drippers) + 3))
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert waited < 3 * settings.webhook_timeout_s, f"the good receiver waited {waited:.1f} s"
    for job in answered:  # 200 came at once: delivered, whatever the body does after
        assert (await db[OUTBOX].find_one({"_id": job["_id"]}))["webhook"] == "delivered"
    dripped = await db[OUTBOX].find_one({"_id": drippers[0]["_id"]})
    assert dripped["webhook"] == "failed" and dripped["webhook_last"] == "no answer within 2 s"
    assert grown_mb < 100, f"the relay's peak memory grew by {grown_mb:.0f} MB"


async def test_the_relay_connects_to_the_address_it_checked_not_to_a_second_answer(hook_settings, mongo, receiver):
    """DNS rebinding: a name that answers a public address to the check and a private one to the
    connection. The relay resolves once, checks, and connects to that address with the name as Host."""
    db = mongo[hook_settings.main_db]
    answers: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"] if host == "rebind.invalid" else []

    job = ended_job(receiver)
    job["callback_url"] = f"http://rebind.invalid:{receiver.port}/hooks/{job['_id']}"  # no resolver knows it
    async with httpx.AsyncClient(timeout=5) as http:
        deliveries = relays.webhooks.Deliveries(db[OUTBOX], http, hook_settings, resolver)
        async with serving(relays.webhooks.build(db, deliveries, hook_settings)):
            await db[OUTBOX].insert_one(job)
            await eventually(lambda: db[OUTBOX].find_one({"_id": job["_id"], "webhook": "delivered"}))
    assert answers == ["rebind.invalid"]  # resolved once, for the check
    (attempt,) = receiver.attempts()[job["_id"]]
    assert attempt["host"] == f"rebind.invalid:{receiver.port}" and attempt["signed"]


async def test_a_url_that_can_never_be_delivered_to_is_given_up_and_recorded(hook_settings, mongo, receiver):
    """Accepted before the rules refused it: a control character made httpx raise InvalidURL, which
    no retry caught, and the job stayed `webhook: pending` for ever."""
    db = mongo[hook_settings.main_db]
    broken, public_only = ended_job(receiver), ended_job(receiver)
    broken["callback_url"] = f"http://127.0.0.1:{receiver.port}/hooks/\x07"
    public_only["callback_url"] = "http://100.64.0.1/hook"  # carrier-grade NAT: not global
    strict = hook_settings.model_copy(update={"webhook_allow_private": False})
    async with httpx.AsyncClient(timeout=5) as http:
        deliveries = relays.webhooks.Deliveries(db[OUTBOX], http, strict)
        async with serving(relays.webhooks.build(db, deliveries, strict)):
            await db[OUTBOX].insert_many([broken, public_only])
            await eventually(lambda: counted(db[OUTBOX], {"webhook": "refused"}, 2))
    for job, words in ((broken, "control characters"), (public_only, "not public")):
        doc = await db[OUTBOX].find_one({"_id": job["_id"]})
        assert doc["webhook_last"].startswith("refused:") and words in doc["webhook_last"]
    assert receiver.received == []
