"""Resume tokens, one per relay, kept in MongoDB beside the collection the relay watches."""

from collections.abc import Mapping
from typing import Any, Protocol

from pymongo.asynchronous.collection import AsyncCollection

from events.contracts import utcnow
from events.retry import transient


class TokenStore(Protocol):
    async def load(self, relay: str) -> dict[str, Any] | None: ...
    async def save(self, relay: str, token: Mapping[str, Any]) -> None: ...
    async def clear(self, relay: str) -> None: ...


class MongoTokenStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

    @transient
    async def load(self, relay: str) -> dict[str, Any] | None:
        doc = await self.collection.find_one({"_id": relay})
        return doc["token"] if doc else None

    @transient
    async def save(self, relay: str, token: Mapping[str, Any]) -> None:
        await self.collection.update_one(
            {"_id": relay}, {"$set": {"token": token, "updated_at": utcnow()}}, upsert=True
        )

    @transient
    async def clear(self, relay: str) -> None:
        await self.collection.delete_one({"_id": relay})
