"""Reading jobs for answers: the read model in `main_db.outbox`, and readiness from storage.

A job is `ready` exactly when `detection/{id}.json` exists in storage: each job of an answer is
checked there (a bounded number at a time), so an answer costs in proportion to its jobs, never to
what storage holds. Everything else (status, progress, failure) comes from the read model.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.schemas import JobProgress, Operation, ResultPending
from api.timing import elapsed_seconds, format_duration
from events.contracts import JobState, detection_key
from events.statuses import DESCRIPTIONS, OutboxStatus
from events.storage import ObjectStore, PermanentStorageError

CONCURRENT_CHECKS = 16
MISSING_RESULT = "the result is no longer in storage"


@dataclass(frozen=True)
class JobView:
    """A job as an answer shows it: its read model, corrected by storage (`ready_at`)."""

    state: JobState
    ready_at: datetime | None

    @property
    def status(self) -> str:
        if self.ready_at is not None:
            return OutboxStatus.READY.value
        if self.state.status == OutboxStatus.READY:  # the read model saw the file, storage lost it since
            return OutboxStatus.FAILED.value
        return self.state.status.value

    @property
    def error(self) -> str | None:
        if self.ready_at is None and self.state.status == OutboxStatus.READY:
            return MISSING_RESULT
        return self.state.error if self.status == OutboxStatus.FAILED else None

    def times(self) -> dict[str, Any]:
        finished = (self.ready_at or self.state.finished_at) if self.status in ("ready", "failed") else None
        seconds = elapsed_seconds(self.state.created_at, finished)
        return {"processing_time_seconds": seconds, "processing_time_formatted": format_duration(seconds)}

    def progress(self) -> JobProgress:
        state = self.state
        if self.status == OutboxStatus.READY:
            total = state.frames_total if state.frames_total is not None else state.frames_done
            return JobProgress(frames_total=total, frames_done=total or state.frames_done, progress=1.0, eta_seconds=0)
        eta = state.eta_seconds if self.status == OutboxStatus.SENT else None
        return JobProgress(frames_total=state.frames_total, frames_done=state.frames_done, progress=state.progress,
                           eta_seconds=eta)  # fmt: skip

    def pending(self) -> ResultPending:
        return ResultPending(
            status=self.status,
            event_id=self.state.id,
            file_name=self.state.file_name,
            status_description=DESCRIPTIONS.get(self.status, self.status),
            error=self.error,
            **self.times(),
            **self.progress().model_dump(),
        )

    def operation(self) -> Operation:
        return Operation(
            video_id=self.state.id,
            file_name=self.state.file_name,
            status_code=self.status,
            status_description=DESCRIPTIONS.get(self.status, self.status),
            error=self.error,
            **self.times(),
            **self.progress().model_dump(),
        )


async def ready_at(store: ObjectStore, state: JobState) -> datetime | None:
    """When the job's detection file was written, or None if there is none."""
    if state.status == OutboxStatus.FAILED:
        return None
    try:
        return await store.modified_at(state.payload.bucket, detection_key(state.id))
    except PermanentStorageError:  # the bucket is gone: no result
        return None


async def views(store: ObjectStore, docs: list[dict[str, Any]], check_pending: bool = True) -> list[JobView]:
    """The jobs of an answer, each checked in storage. Live updates pass `check_pending=False`: a change
    of a pending job is sent as the read model has it (the read model's own `ready` follows the file
    within moments, and is checked), instead of one storage request per change and per listener."""
    limit = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def view(doc: dict[str, Any]) -> JobView:
        state = JobState.model_validate(doc)
        if not check_pending and state.status in (OutboxStatus.NEW, OutboxStatus.SENT):
            return JobView(state, None)
        async with limit:
            return JobView(state, await ready_at(store, state))

    return list(await asyncio.gather(*(view(doc) for doc in docs)))
