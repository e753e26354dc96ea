"""Webhook relay: a job that ends (`ready` or `failed` in the read model) with a `callback_url` -> a
signed POST to that URL.

The relay follows `main_db.outbox` with a change stream and a persisted resume token, like the other
relays; its start-up sweep finds every delivery not finished yet (`webhook: pending`), so a relay
killed mid-way delivers after its restart (at least once; the delivery id lets the receiver drop a
repeat). Each delivery runs on its own, retried with exponential back-off until the receiver answers
2xx within WEBHOOK_TIMEOUT_S or WEBHOOK_MAX_ATTEMPTS are spent; each attempt is recorded in the job's
document (`webhook_attempts`, `webhook_last`), so a restarted relay goes on counting.

A receiver cannot hold the relay: an attempt has one deadline for all of it (connecting, sending,
the answer's headers), the answer's body is never read, and the connection goes to the address that
was checked (`events.webhooks`), with the URL's host in `Host` and in TLS's SNI. A URL that can never
be delivered to (refused by the rules, or one the HTTP client cannot send) is given up and recorded.
"""

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_exponential

from events import webhooks
from events.clients import mongo_client
from events.contracts import CHECKPOINTS, OUTBOX, JobState, utcnow
from events.health import health_app
from events.jobstate import FINAL
from events.log import get_logger
from events.retry import is_infrastructure, transient
from events.runtime import http_server
from events.settings import Settings
from events.statuses import OutboxStatus
from relays.checkpoints import MongoTokenStore
from relays.follow import Relay

log = get_logger(__name__)
NAME = "webhook-relay"
ENDED = [status.value for status in FINAL]
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": "update", "updateDescription.updatedFields.status": {"$in": ENDED}},
                {"operationType": {"$in": ["insert", "replace"]}, "fullDocument.status": {"$in": ENDED}},
            ]
        }
    }
]
SOURCE_FILTER = {"webhook": webhooks.PENDING, "status": {"$in": ENDED}}
MAX_BACKOFF_S = 600
CONCURRENT_DELIVERIES = 32


def pinned(callback_url: str, address: str) -> tuple[httpx.URL, dict[str, Any]]:
    """The URL with its host replaced by the checked address, and the request's TLS name (SNI, and the
    name the certificate is verified against) set to the URL's host."""
    url = httpx.URL(callback_url)
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=address), extensions


def body_of(job: JobState, public_url: str) -> bytes:
    """The webhook's JSON body; `result_url` on the API as receivers reach it (PUBLIC_URL)."""
    seconds = round(((job.finished_at or utcnow()) - job.created_at).total_seconds(), 3)
    return json.dumps({
        "event_id": job.id,
        "status": job.status.value,
        "error": job.error if job.status == OutboxStatus.FAILED else None,
        "processing_time_seconds": seconds,
        "result_url": f"{public_url.rstrip('/')}/api/result_video/{job.id}",
    }).encode()  # fmt: skip


class Deliveries:
    """Runs each pending delivery once in this process, however often the stream or sweep sees it."""

    def __init__(
        self, jobs: AsyncCollection, client: httpx.AsyncClient, settings: Settings,
        resolver: webhooks.Resolver = webhooks.resolve,
    ) -> None:  # fmt: skip
        self.jobs, self.client, self.settings, self.resolver = jobs, client, settings, resolver
        self.running: dict[str, asyncio.Task] = {}
        self.limit = asyncio.Semaphore(CONCURRENT_DELIVERIES)
        self.delivered = self.given_up = self.attempts = 0

    async def schedule(self, doc: dict[str, Any]) -> None:
        job = JobState.model_validate(doc)
        if job.id not in self.running and job.callback_url:
            task = asyncio.create_task(self.deliver(job, doc.get("webhook_attempts", 0)))
            self.running[job.id] = task
            task.add_done_callback(lambda _: self.running.pop(job.id, None))

    async def deliver(self, job: JobState, attempts_before: int) -> None:
        with structlog.contextvars.bound_contextvars(event_id=job.id):
            try:
                await self._deliver(job, attempts_before)
            except Exception as error:  # noqa: BLE001 - one delivery never stops the others
                reason = f"{type(error).__name__}: {error}"[:200]
                if is_infrastructure(error):  # the database: the delivery stays pending, resumed after a restart
                    log.error("webhook delivery stopped, resumed after a restart", error=reason)
                    return
                log.error("webhook delivery cannot go on, given up", error=reason)
                with contextlib.suppress(Exception):
                    await self.record(job.id, f"given up: {reason}")
                    await self.finish(job.id, "failed")

    async def _deliver(self, job: JobState, attempts_before: int) -> None:
        assert job.callback_url is not None
        body, delivery = body_of(job, self.settings.public_url), webhooks.delivery_id(job.id)
        remaining = self.settings.webhook_max_attempts - attempts_before
        if remaining <= 0:
            await self.finish(job.id, "failed")
            return
        if attempts_before:  # a restarted relay waits as the interrupted one would have
            await asyncio.sleep(min(self.settings.webhook_backoff_s * 2 ** (attempts_before - 1), MAX_BACKOFF_S))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(remaining),
            wait=wait_exponential(multiplier=self.settings.webhook_backoff_s, max=MAX_BACKOFF_S),
            retry=retry_if_result(lambda outcome: outcome == "retry"),
            retry_error_callback=lambda _state: "failed",
        )
        outcome: str = await retrying(self.attempt, job, body, delivery)
        await self.finish(job.id, outcome)

    async def attempt(self, job: JobState, body: bytes, delivery: str) -> str:
        """One POST; returns `delivered`, `refused` (never to be tried again) or `retry`."""
        assert job.callback_url is not None
        try:
            addresses = await webhooks.check_callback_url(job.callback_url, self.settings.webhook_allow_private,
                                                          self.resolver)  # fmt: skip
            url, extensions = pinned(job.callback_url, addresses[0])
        except (webhooks.RefusedURL, httpx.InvalidURL) as error:
            await self.record(job.id, f"refused: {error}"[:200])
            return "refused"
        timestamp = int(time.time())
        secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else ""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "vdetect-webhooks",
            "Host": httpx.URL(job.callback_url).netloc.decode("ascii"),
            "X-Vdetect-Delivery": delivery,
            "X-Vdetect-Timestamp": str(timestamp),
            "X-Vdetect-Signature": webhooks.signature(secret, timestamp, body),
        }
        async with self.limit:
            try:
                async with (
                    asyncio.timeout(self.settings.webhook_timeout_s),
                    self.client.stream("POST", url, content=body, headers=headers, extensions=extensions) as response,
                ):  # the answer's body is not read: closing the stream drops the connection
                    result, ok = f"HTTP {response.status_code}", response.is_success
            except TimeoutError:
                result, ok = f"no answer within {self.settings.webhook_timeout_s:g} s", False
            except httpx.HTTPError as error:
                result, ok = f"{type(error).__name__}: {error}"[:200], False
        self.attempts += 1
        await self.record(job.id, result)
        log.info("webhook attempt", outcome=result, delivered=ok)
        return "delivered" if ok else "retry"

    @transient
    async def record(self, job: str, result: str) -> None:
        recorded = {"webhook_last": result, "webhook_last_at": utcnow()}
        await self.jobs.update_one({"_id": job}, {"$inc": {"webhook_attempts": 1}, "$set": recorded})

    @transient
    async def finish(self, job: str, outcome: str) -> None:
        await self.jobs.update_one({"_id": job, "webhook": webhooks.PENDING}, {"$set": {"webhook": outcome}})
        if outcome == "delivered":
            self.delivered += 1
        else:
            self.given_up += 1
            log.error("webhook not delivered, given up", outcome=outcome)

    async def drain(self) -> None:
        """Stop the deliveries under way: their attempts are recorded, they resume after a restart."""
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


def build(db: AsyncDatabase, deliveries: Deliveries, settings: Settings) -> Relay:
    return Relay(
        name=NAME,
        collection=db[OUTBOX],
        pipeline=PIPELINE,
        source_filter=SOURCE_FILTER,
        handle=deliveries.schedule,
        tokens=MongoTokenStore(db[CHECKPOINTS]),
        checkpoint_interval=settings.relay_checkpoint_interval_s,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    timeout = httpx.Timeout(settings.webhook_timeout_s)
    async with (
        mongo_client(**settings.mongo()) as client,
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
    ):
        db = client[settings.main_db]
        deliveries = Deliveries(db[OUTBOX], http, settings)
        relay = build(db, deliveries, settings)
        try:
            async with http_server(
                health_app(relay.name, relay.report), settings.bind_host, settings.webhook_relay_port
            ):
                await relay.run(stop)
        finally:
            await deliveries.drain()
