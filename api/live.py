"""Live updates: one change stream on the read model per API process, fanned out to every listener.

Each Server-Sent Events client listens here instead of opening a change stream of its own, so a
thousand open pages cost one database cursor, not a thousand connections. A listener keeps only the
latest document of each job it has not sent yet: a slow client skips intermediate progress, never a
final status, and its memory is bounded by the jobs that changed meanwhile.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, OperationFailure

from events.log import get_logger
from events.runtime import wait_or_stop

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


class Listener:
    def __init__(self, job: str | None) -> None:
        self.job = job  # None: every job
        self.latest: dict[str, dict[str, Any] | str] = {}
        self.changed = asyncio.Event()
        self.resync = False  # changes may have been missed: read the current state again

    def offer(self, job: str, doc: dict[str, Any] | str) -> None:
        if self.job is None or self.job == job:
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
    def __init__(self, jobs: AsyncCollection) -> None:
        self.jobs = jobs
        self.listeners: set[Listener] = set()
        self.closed = False

    def close(self) -> None:
        """The server is stopping: every listener wakes up, and its stream ends."""
        self.closed = True
        for listener in list(self.listeners):
            listener.changed.set()

    @contextlib.asynccontextmanager
    async def listen(self, job: str | None = None) -> AsyncIterator[Listener]:
        """Listen from now on; read the current state after entering, so no change falls in between."""
        listener = Listener(job)
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
