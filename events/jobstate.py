"""The job state machine: which job event moves which status, and which is ignored. Pure: no I/O.

A job's read model (`JobState`, kept by the API in `main_db.outbox`) is the fold of its events in
topic order: `apply(state, event)` returns the state after the event. An event that changes nothing
(a duplicate, or one that arrives after the job moved past it) returns the state unchanged, so
replaying the topic from the start rebuilds the same documents.

    accepted            nothing      -> new (the document is created from the event)
    sent                new          -> sent
    started, progress   new, sent    -> sent, with frames_total, frames_done, progress, eta_seconds
    ready               new, sent    -> ready (progress 1.0)
    failed              new, sent    -> failed, with the reason
    deleted             any          -> nothing (the document is removed)

`ready` and `failed` are final: anything after them is ignored. Counters only grow and progress
never goes back; `frames_total` is taken only from an event at least as far on as the job (an early
estimate is replaced by the exact count when the video has been read; a late redelivery is not).
"""

from datetime import datetime
from typing import Any

from events.contracts import JobEvent, JobEventType, JobState
from events.statuses import OutboxStatus

FINAL = {OutboxStatus.READY, OutboxStatus.FAILED}
MAX_PENDING_PROGRESS = 0.99  # 1.0 means ready: the detection file exists


def apply(state: JobState | None, event: JobEvent) -> JobState | None:
    """The job's state after `event`; `state` itself if the event changes nothing; None: no job."""
    if event.type == JobEventType.DELETED:
        return None
    if state is None:
        return JobState.accepted(event) if event.type == JobEventType.ACCEPTED else None
    if state.status in FINAL or event.type in (JobEventType.ACCEPTED, JobEventType.RENDER):
        return state  # a rendering is not a change of the job's state
    moved: dict[str, Any]
    match event.type:
        case JobEventType.SENT:
            moved = {"status": OutboxStatus.SENT} if state.status == OutboxStatus.NEW else {}
        case JobEventType.STARTED | JobEventType.PROGRESS:
            moved = _progress(state, event)
        case JobEventType.READY:
            total = event.frames_total if event.frames_total is not None else state.frames_total
            moved = {"status": OutboxStatus.READY, "frames_total": total, "frames_done": total or state.frames_done,
                     "progress": 1.0, "eta_seconds": 0.0, "finished_at": event.at, "error": None}  # fmt: skip
        case JobEventType.FAILED:
            moved = {"status": OutboxStatus.FAILED, "error": event.error or "unknown error", "eta_seconds": None,
                     "finished_at": event.at}  # fmt: skip
    return _moved(state, event, moved)


def _progress(state: JobState, event: JobEvent) -> dict[str, Any]:
    started_at = state.started_at or event.at
    total = state.frames_total
    done = max(state.frames_done, event.frames_done or 0)
    if event.frames_total is not None and (event.frames_done or 0) >= state.frames_done:
        total = event.frames_total  # from an event at least as far on as the job: not a late redelivery
    progress = state.progress
    if total:
        progress = max(progress, min(done / total, MAX_PENDING_PROGRESS))
    return {
        "status": OutboxStatus.SENT,
        "started_at": started_at,
        "frames_total": total,
        "frames_done": done,
        "progress": round(progress, 4),
        "eta_seconds": eta(started_at, event.at, done, total),
    }


def eta(started_at: datetime, now: datetime, done: int, total: int | None) -> float | None:
    """Seconds left at the rate so far; None until a frame is done and the total is known."""
    elapsed = (now - started_at).total_seconds()
    if not total or done <= 0 or elapsed <= 0:
        return None
    return round(max(total - done, 0) * elapsed / done, 1)


def _moved(state: JobState, event: JobEvent, changes: dict[str, Any]) -> JobState:
    changed = {name: value for name, value in changes.items() if getattr(state, name) != value}
    if not changed or set(changed) == {"eta_seconds"}:  # a duplicate: the ETA alone does not move a job
        return state
    updated_at = max(state.updated_at, event.at) if state.updated_at else event.at
    return state.model_copy(update={**changed, "version": state.version + 1, "updated_at": updated_at})
