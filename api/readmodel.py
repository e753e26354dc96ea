"""The API's read model, `main_db.outbox`: every query and write the API makes of it, in one place.

One document per job: the API inserts it (durably, before it answers), the projector moves its state on
(`events.jobstate`, each write conditional on the document's `version`), deletions remove it. The
relays keep their own bookkeeping fields in it (`relays/outbox.py`, `relays/webhooks.py`); every field
is in `OutboxDocument`. Live updates follow it with a change stream (`api.live`), never by polling.
"""

import base64
import binascii
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from pymongo import WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from events.contracts import JobState, OutboxDocument, OutboxPayload, utcnow
from events.statuses import OutboxStatus

# The write that acknowledges a job to a client is durable before the answer: on a majority of the
# replica set and in its journal (the local stack's SecantusDB syncs each commit).
DURABLE = WriteConcern(w="majority", j=True)
WAITING = [OutboxStatus.NEW.value, OutboxStatus.SENT.value]
MAX_CURSOR = 256
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"  # base64url without padding
ORDER = [("created_at", 1), ("_id", 1)]  # status/all's order: the order jobs were accepted in


class BadCursor(ValueError):
    """An `after` cursor that is not one of ours."""


def cursor_of(state: JobState) -> str:
    """An opaque page cursor: the position of `state` in (created_at, _id) order."""
    raw = json.dumps([state.created_at.isoformat(), state.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after(cursor: str) -> dict[str, Any]:
    """The query for jobs after the cursor; BadCursor if it is not one of ours."""
    refused = BadCursor("the `after` cursor is not valid: pass the `next` of a previous page")
    try:
        if len(cursor) > MAX_CURSOR:  # ours are about 100 characters
            raise ValueError("too long")
        created, job = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise refused from None
    if not isinstance(job, str):
        raise refused
    return {"$or": [{"created_at": {"$gt": at}}, {"created_at": at, "_id": {"$gt": job}}]}


class ReadModel:
    def __init__(self, outbox: AsyncCollection) -> None:
        self.outbox = outbox

    async def ping(self) -> None:
        """A quick round trip: an unreachable database is a 503 before a client's upload is stored."""
        await self.outbox.database.command("ping")

    async def add(self, entry: OutboxDocument) -> None:
        await self.outbox.with_options(write_concern=DURABLE).insert_one(entry.to_mongo())

    async def get(self, event_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.outbox.find_one({"_id": event_id})
        return found

    async def exists(self, event_id: str) -> bool:
        return await self.outbox.find_one({"_id": event_id}, {"_id": 1}) is not None

    async def location(self, event_id: str) -> OutboxPayload | None:
        """Where the job's video is (bucket and key), or None for an unknown job."""
        doc = await self.outbox.find_one({"_id": event_id}, {"payload": 1})
        return OutboxPayload.model_validate(doc["payload"]) if doc else None

    async def page(self, status: OutboxStatus | None, cursor: str | None, limit: int | None) -> list[dict[str, Any]]:
        """Jobs in the order they were accepted: of `status` if given, after `cursor` if given, `limit` (+1,
        which tells whether there is a next page) if given. BadCursor for a cursor not of ours."""
        query: dict[str, Any] = {"status": status.value} if status else {}
        if cursor is not None:
            query.update(after(cursor))
        found = self.outbox.find(query).sort(ORDER)
        if limit is not None:
            found = found.limit(limit + 1)
        return await found.to_list(None)

    async def active(self, limit: int) -> list[dict[str, Any]]:
        """The jobs waiting or in progress, the newest first."""
        return await self.outbox.find({"status": {"$in": WAITING}}).sort("created_at", -1).limit(limit).to_list(None)

    async def waiting(self, client: str | None, limit: int) -> int:
        """How many jobs wait or run, of `client` (None: of everyone), counted up to `limit` only: the cost of
        the check never grows with the backlog."""
        query: dict[str, Any] = {"status": {"$in": WAITING}}
        if client is not None:
            query["client"] = client
        return await self.outbox.count_documents(query, limit=limit)

    async def locations(self) -> AsyncIterator[tuple[str, OutboxPayload]]:
        """Every job's id and video location."""
        async for doc in self.outbox.find({}, {"payload": 1}):
            yield doc["_id"], OutboxPayload.model_validate(doc["payload"])

    async def request_render(self, event_id: str) -> None:
        """Ask for the job's annotated video: the outbox relay publishes the request (`render_pending`)."""
        await self.outbox.update_one({"_id": event_id},
                                     {"$set": {"render_requested_at": utcnow(), "render_pending": True}})  # fmt: skip

    async def remove(self, event_id: str) -> None:
        await self.outbox.delete_one({"_id": event_id})

    # The projector's: a job's state, and its versioned writes.

    async def state(self, event_id: str) -> JobState | None:
        doc = await self.get(event_id)
        return JobState.model_validate(doc) if doc else None

    async def create(self, state: JobState) -> bool:
        """A job replayed into an empty read model; False if it exists meanwhile."""
        try:
            await self.outbox.insert_one(state.to_mongo())
        except DuplicateKeyError:
            return False
        return True

    async def move(self, before: JobState, fields: dict[str, Any]) -> bool:
        """Write a job's new state if nobody changed it since `before` (its version); False otherwise."""
        written = await self.outbox.update_one({"_id": before.id, "version": before.version}, {"$set": fields})
        return written.matched_count == 1
