"""The indexes the services' queries rely on, created from Python: idempotent, so every start may
ask for them. The API creates those of `main_db` when it starts, the runner those of `runner_db`; the
local stack, compose and the tests get them that way, with nothing else to run."""

from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from events.contracts import OUTBOX, PREDICTIONS, SESSIONS
from events.log import get_logger

log = get_logger(__name__)

# main_db: the outbox relay's sweep and stall check find jobs by status and age; status/all pages by
# (created_at, _id), optionally of one status; the webhook relay's sweep finds pending deliveries; the
# API counts the jobs waiting per client.
MAIN_DB = {
    OUTBOX: [
        IndexModel([("status", ASCENDING), ("relayed_at", ASCENDING)]),
        IndexModel([("created_at", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("status", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("webhook", ASCENDING)], sparse=True),
        IndexModel([("client", ASCENDING), ("status", ASCENDING)]),
    ],
    SESSIONS: [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)],  # expired sessions go
}
# runner_db: the S3 relay's sweep and the runner's stall check find jobs by status and age; the S3
# relay's lost check finds the outcome events not read yet.
RUNNER_DB = {
    PREDICTIONS: [
        IndexModel([("status", ASCENDING), ("updated_at", ASCENDING)]),
        IndexModel([("outcome_sent_at", ASCENDING)], sparse=True),
    ],
}


async def ensure_indexes(db: AsyncDatabase[Any], indexes: dict[str, list[IndexModel]]) -> None:
    """Create the indexes that are missing (an existing index with the same keys and options is kept)."""
    for collection, models in indexes.items():
        names = await db[collection].create_indexes(models)
        log.debug("indexes ensured", collection=f"{db.name}.{collection}", indexes=names)
