"""Live updates: one change stream on the read model per API process, fanned out to every listener, and
the Server-Sent Events stream each client reads (`updates`, its decisions in the pure `Shown`).

Each Server-Sent Events client listens here instead of opening a change stream of its own, so a
thousand open pages cost one database cursor, not a thousand connections. A listener keeps only the
latest document of each job it has not sent yet: a slow client skips intermediate progress, never a
final status. What one listener holds is bounded: past MAX_HELD changed jobs it drops them and reads
the current state again (itself bounded), so a stuck reader never holds the whole read model. How
many streams are open is bounded too, per client address and in all (`JobFeed.room`).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, OperationFailure
from starlette.requests import Request

from api.jobs import JobView, views
from api.readmodel import ReadModel
from events.jobstate import FINAL
from events.log import get_logger
from events.runtime import wait_or_stop
from events.storage import ObjectStore

log = get_logger(__name__)
AWAIT_MS = 200
RECONNECT_WAIT_S = 1.0
# Changes clients see: new and removed jobs, and every change the projector makes (it bumps `version`).
PIPELINE = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$in": ["insert", "replace", "delete"]}},
                {"operationType": "update", "updateDescription.updatedFields.version": {"$exists": True}},
            ]
        }
    }
]
GONE = "gone"  # the job was deleted
KEEPALIVE_S = 15  # a quiet stream sends a comment this often: proxies do not close it
KEEPALIVE = b": keepalive\n\n"
MAX_HELD = 1000  # changed jobs one listener keeps before it reads the current state again


class TooManyStreams(Exception):
    """No room for another live update stream; the message says whose limit it is."""


class Listener:
    def __init__(self, job: str | None, client: str = "") -> None:
        self.job = job  # None: every job
        self.client = client
        self.latest: dict[str, dict[str, Any] | str] = {}
        self.changed = asyncio.Event()
        self.resync = False  # changes may have been missed: read the current state again

    def offer(self, job: str, doc: dict[str, Any] | str) -> None:
        if self.job is None or self.job == job:
            if len(self.latest) >= MAX_HELD and job not in self.latest:
                self.latest.clear()  # a reader this far behind starts again from the current state
                self.resync = True
            self.latest[job] = doc
            self.changed.set()

    async def next(self, wait_s: float) -> dict[str, dict[str, Any] | str]:
        """What changed since the last call (job -> its document, or GONE); empty after `wait_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), wait_s)
        self.changed.clear()
        changes, self.latest = self.latest, {}
        return changes


class JobFeed:
    def __init__(self, jobs: AsyncCollection, per_client: int = 1_000_000, total: int = 1_000_000) -> None:
        self.jobs, self.per_client, self.total = jobs, per_client, total
        self.listeners: set[Listener] = set()
        self.closed = False

    def room(self, client: str) -> None:
        """TooManyStreams unless `client` may open another stream (MAX_EVENT_STREAMS_PER_CLIENT, MAX_EVENT_STREAMS)."""
        if len(self.listeners) >= self.total:
            raise TooManyStreams(f"the server has {self.total} live update streams open, the limit")
        if sum(listener.client == client for listener in self.listeners) >= self.per_client:
            raise TooManyStreams(f"this client has {self.per_client} live update streams open, the limit")

    def close(self) -> None:
        """The server is stopping: every listener wakes up, and its stream ends."""
        self.closed = True
        for listener in list(self.listeners):
            listener.changed.set()

    @contextlib.asynccontextmanager
    async def listen(self, job: str | None = None, client: str = "") -> AsyncIterator[Listener]:
        """Listen from now on; read the current state after entering, so no change falls in between."""
        listener = Listener(job, client)
        self.listeners.add(listener)
        try:
            yield listener
        finally:
            self.listeners.discard(listener)

    def dispatch(self, change: dict[str, Any]) -> None:
        job = change["documentKey"]["_id"]
        doc = GONE if change["operationType"] == "delete" else change.get("fullDocument")
        if doc is None:  # updated, then deleted before the lookup
            doc = GONE
        for listener in list(self.listeners):
            listener.offer(job, doc)

    async def run(self, stop: asyncio.Event) -> None:
        token = None
        while not stop.is_set():
            try:
                async with await self.jobs.watch(
                    PIPELINE, full_document="updateLookup", resume_after=token, max_await_time_ms=AWAIT_MS
                ) as stream:
                    while not stop.is_set() and stream.alive:
                        if (change := await stream.try_next()) is not None:
                            self.dispatch(change)
                        token = stream.resume_token
            except ConnectionFailure as error:
                log.warning("live updates: database unreachable, retrying", error=str(error)[:200])
                await wait_or_stop(stop, RECONNECT_WAIT_S)
            except OperationFailure as error:  # the token aged out: listeners read the current state again
                log.warning("live updates: change stream restarted", error=str(error)[:200])
                token = None
                for listener in list(self.listeners):
                    listener.resync = True
                    listener.changed.set()


@dataclass
class Shown:
    """What one stream has shown, and what it does next: the pure core of `updates`.

    A pending job's version is kept once shown, so nothing older is sent again (a change stream and a
    reread may bring the same document twice); a final status is kept by nobody (it does not change:
    memory stays bounded); a job's own stream is over after its final status, or when it is deleted."""

    job: str | None  # None: every job
    versions: dict[str, int] = field(default_factory=dict)
    over: bool = False

    def fresh(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The documents newer than what was shown of their job."""
        return [doc for doc in docs if doc.get("version", 0) > self.versions.get(doc["_id"], -1)]

    def show(self, view: JobView) -> None:
        if view.status in FINAL:
            self.versions.pop(view.state.id, None)
            self.over = self.over or self.job is not None
        else:
            self.versions[view.state.id] = view.state.version

    def after(self, changes: dict[str, dict[str, Any] | str], resync: bool) -> tuple[str, list[dict[str, Any]]]:
        """What a listener's changes call for: ("reread", []) the current state (changes may have been
        missed), ("end", []) the stream (its job was deleted), ("keepalive", []) after a quiet wait, or
        ("show", documents)."""
        if resync:
            return "reread", []
        if self.job is not None and changes.get(self.job) == GONE:
            return "end", []
        if not changes:
            return "keepalive", []
        return "show", [doc for doc in changes.values() if isinstance(doc, dict)]


def sse(view: JobView) -> bytes:
    return f"event: status\ndata: {view.pending().model_dump_json()}\n\n".encode()


async def updates(
    feed: JobFeed, jobs: ReadModel, store: ObjectStore, request: Request, job: str | None, client: str, page: int
) -> AsyncIterator[bytes]:
    """Server-Sent Events: the current state first (one job's, or the `page` newest jobs in progress), then
    every change the read model's change stream brings; a job's own stream ends after its final status."""
    shown = Shown(job)

    async def current() -> list[dict[str, Any]]:
        if job is not None:
            return [doc] if (doc := await jobs.get(job)) else []
        return await jobs.active(page)

    async with feed.listen(job, client) as listener:
        docs, checked = await current(), True
        if job is not None and not docs:
            return  # deleted meanwhile
        while True:
            # a change of a pending job is shown as the read model has it (storage checked only when read whole)
            for view in await views(store, shown.fresh(docs), checked):
                yield sse(view)
                shown.show(view)
                if shown.over:
                    return
            if await request.is_disconnected() or feed.closed:
                return
            changes = await listener.next(KEEPALIVE_S)
            step, docs = shown.after(changes, listener.resync)
            checked = step == "reread"
            if step == "reread":
                listener.resync = False
                docs = await current()
            elif step == "end":
                return
            elif step == "keepalive":
                yield KEEPALIVE
