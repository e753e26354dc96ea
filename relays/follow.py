"""The change-stream loop both relays share.

Order of work, and why no event is lost or applied twice:

1. Open the stream (from the stored resume token, or from now if there is none), then sweep the
   collection for documents still in the source status. The stream is opened first, so anything
   written during the sweep is also seen on the stream; the sweep catches what was written while
   no relay ran or what a lost token would skip.
2. For each change, read the document again and skip it unless it is still in the source status
   (the sweep or another instance may have handled it). Then do the side effect (publish to Kafka,
   write the object), then move the status on with a conditional update (`new -> sent`,
   `predictable -> ready`), and only then save the resume token. A crash before the save replays
   the change after restart: the side effect may happen again (consumers are idempotent; the object
   is written only if absent) and the conditional update matches nothing the second time.
3. While the collection is quiet, the stream's post-batch resume token still moves on and is saved
   every `relay_checkpoint_interval_s`, so a restart after a long quiet spell does not hand the server
   a token that has aged out of its history.
4. If the server refuses the token (history lost, invalid token) or the stream is invalidated, the
   token is dropped and the loop starts again at step 1: a fresh stream plus a sweep, so nothing the
   lost token covered is skipped.

Several instances of one relay may run at once: they race on the conditional update, one wins, and
the other's side effect is a duplicate that downstream consumers ignore. One instance is enough.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, OperationFailure

from events import metrics
from events.contracts import JobEvent
from events.crash import crash_point
from events.log import get_logger
from events.retry import is_infrastructure, transient
from events.runtime import wait_or_stop
from relays.checkpoints import TokenStore

log = get_logger(__name__)

# Server answers meaning "this resume token cannot be used any more".
TOKEN_LOST_CODES = {
    9,  # FailedToParse: a corrupted token
    136,  # CappedPositionLost
    260,  # InvalidResumeToken
    280,  # ChangeStreamFatalError
    286,  # ChangeStreamHistoryLost
}
AWAIT_MS = 500
RECONNECT_WAIT_S = 1.0

# Called only with documents that match the relay's source filter at the time they were read.
Handler = Callable[[dict[str, Any]], Awaitable[None]]
# Called with the `_id` of a deleted document.
DeleteHandler = Callable[[Any], Awaitable[None]]


@dataclass
class RelayStats:
    changes: int = 0
    swept: int = 0
    sweeps: int = 0  # sweeps finished: the relay follows its stream from then on
    tokens_lost: int = 0
    checkpoints: int = 0
    redeliveries: int = 0


# Publishes a job event; may answer where it went ({partition: offset}), which lets a relay tell later
# whether the broker still holds it (`events.inflight`).
PublishEvent = Callable[[JobEvent], Awaitable[dict[str, int] | None]]


def job_event_publisher(producer: AIOKafkaProducer, topic: str) -> PublishEvent:
    """Publish a change of a job to `topic` (`job_events`), keyed by the job (its events stay in order)."""

    @transient
    async def publish(event: JobEvent) -> dict[str, int]:
        metadata = await producer.send_and_wait(topic, event.to_bytes(), key=event.event_id.encode())
        return {str(metadata.partition): metadata.offset}

    return publish


@dataclass
class Relay:
    name: str
    collection: AsyncCollection
    pipeline: list[dict[str, Any]]
    source_filter: dict[str, Any]
    handle: Handler
    tokens: TokenStore
    checkpoint_interval: float
    on_delete: DeleteHandler | None = None  # the pipeline must match deletes for this to be called
    stats: RelayStats = field(default_factory=RelayStats)

    def __post_init__(self) -> None:
        metrics.start_at_zero(metrics.TOKENS_LOST, {"relay": self.name})
        metrics.start_at_zero(metrics.RELAY_LAG, {"relay": self.name})

    def report(self) -> dict[str, Any]:
        """The relay's counters, for its /health."""
        return asdict(self.stats)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._follow(await self.tokens.load(self.name), stop)
            except ConnectionFailure as error:  # the server went away: wait, then resume from the token
                log.warning("database unreachable, retrying", relay=self.name, error=str(error)[:200])
                await wait_or_stop(stop, RECONNECT_WAIT_S)
            except OperationFailure as error:
                if error.code not in TOKEN_LOST_CODES:
                    raise
                self.stats.tokens_lost += 1
                metrics.TOKENS_LOST.labels(relay=self.name).inc()
                log.error(
                    "resume token refused, reconciling by sweep",
                    relay=self.name,
                    code=error.code,
                    reason=str(error.details.get("errmsg") if error.details else error),
                    tokens_lost=self.stats.tokens_lost,
                )
                await self.tokens.clear(self.name)

    async def handle_current(self, key: Any) -> None:
        """Handle a changed document if it is still in the source status: the change event's own copy
        may be stale (the sweep or another relay instance may have handled it already)."""
        doc = await transient(self.collection.find_one)({"_id": key, **self.source_filter})
        if doc is not None:
            await self.handle(doc)

    async def sweep(self) -> None:
        async for doc in self.collection.find(self.source_filter):
            await self.handle(doc)
            self.stats.swept += 1
        self.stats.sweeps += 1

    async def _follow(self, token: dict[str, Any] | None, stop: asyncio.Event) -> None:
        async with await self.collection.watch(self.pipeline, resume_after=token, max_await_time_ms=AWAIT_MS) as stream:
            log.info("change stream opened", relay=self.name, resumed=token is not None)
            await self.sweep()
            saved: Mapping[str, Any] | None = token
            saved_at = time.monotonic()
            while not stop.is_set() and stream.alive:
                change = await stream.try_next()
                if change is not None:
                    if change["operationType"] == "invalidate":
                        break
                    if change["operationType"] == "delete":
                        if self.on_delete is not None:
                            await self.on_delete(change["documentKey"]["_id"])
                    else:
                        await self.handle_current(change["documentKey"]["_id"])
                    self.stats.changes += 1
                    if (at := change.get("clusterTime")) is not None:  # a bson Timestamp, seconds resolution
                        metrics.RELAY_LAG.labels(relay=self.name).observe(max(time.time() - at.time, 0))
                    crash_point("before_checkpoint")
                elif time.monotonic() - saved_at < self.checkpoint_interval:
                    continue
                if stream.resume_token and stream.resume_token != saved:
                    await self.tokens.save(self.name, stream.resume_token)
                    self.stats.checkpoints += 1
                saved, saved_at = stream.resume_token, time.monotonic()
            if not stop.is_set():  # invalidated: the old token cannot resume, start afresh
                log.error("change stream invalidated, reconciling by sweep", relay=self.name)
                self.stats.tokens_lost += 1
                metrics.TOKENS_LOST.labels(relay=self.name).inc()
                await self.tokens.clear(self.name)


async def every(stop: asyncio.Event, interval_s: float, check: Callable[[], Awaitable[int]], stats: RelayStats) -> None:
    """Run `check` every `interval_s` until `stop`, adding what it sent again to `stats.redeliveries`. A
    broker or database away (or slow to answer) only means "look again later"."""
    while not await wait_or_stop(stop, interval_s):
        try:
            stats.redeliveries += await check()
        except Exception as error:
            if not (is_infrastructure(error) or isinstance(error, TimeoutError)):
                raise
            log.warning("looking for lost events failed, trying again later", error=str(error)[:200])
