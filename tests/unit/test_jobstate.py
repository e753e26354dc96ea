"""The job state machine: which event moves which status, and which is ignored."""

from datetime import UTC, datetime, timedelta

import pytest

from events.contracts import JobEvent, JobEventType, JobState, OutboxPayload
from events.jobstate import apply
from events.statuses import OutboxStatus

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
JOB = "5b0d3c1e-0000-4000-8000-000000000001"


def event(kind: JobEventType, seconds: float = 0, **fields) -> JobEvent:
    return JobEvent(event_id=JOB, type=kind, at=T0 + timedelta(seconds=seconds), **fields)


def accepted() -> JobEvent:
    payload = OutboxPayload(bucket="videos", object=f"input/{JOB}.mp4")
    return event(JobEventType.ACCEPTED, payload=payload, created_at=T0, callback_url="https://example.com/hook")


def fold(*events: JobEvent) -> JobState | None:
    state = None
    for e in events:
        state = apply(state, e)
    return state


def test_accepted_creates_the_job_as_the_api_writes_it() -> None:
    state = fold(accepted())
    assert state is not None and state.status == OutboxStatus.NEW and state.version == 0
    assert state.callback_url == "https://example.com/hook" and state.payload.bucket == "videos"
    assert apply(state, accepted()) is state  # a duplicate


def test_a_whole_job_moves_new_sent_ready_with_growing_progress() -> None:
    sent = fold(accepted(), event(JobEventType.SENT, 1))
    assert sent.status == OutboxStatus.SENT and sent.version == 1
    started = apply(sent, event(JobEventType.STARTED, 2, frames_total=100, frames_done=0))
    assert started.frames_total == 100 and started.progress == 0 and started.started_at == T0 + timedelta(seconds=2)
    half = apply(started, event(JobEventType.PROGRESS, 12, frames_total=100, frames_done=50))
    assert half.progress == 0.5 and half.frames_done == 50
    assert half.eta_seconds == 10.0  # 50 frames in 10 s: 50 more take 10 s
    done = apply(half, event(JobEventType.PROGRESS, 22, frames_total=100, frames_done=100))
    assert done.progress == 0.99  # 1.0 only when the result exists
    ready = apply(done, event(JobEventType.READY, 23, frames_total=100, frames_done=100))
    assert ready.status == OutboxStatus.READY and ready.progress == 1.0 and ready.eta_seconds == 0
    assert ready.finished_at == T0 + timedelta(seconds=23) and ready.version == done.version + 1


def test_failed_keeps_the_reason_and_is_final() -> None:
    failed = fold(accepted(), event(JobEventType.SENT, 1), event(JobEventType.FAILED, 2, error="not a video"))
    assert failed.status == OutboxStatus.FAILED and failed.error == "not a video"
    for late in (event(JobEventType.READY, 3, frames_total=5), event(JobEventType.PROGRESS, 3, frames_done=5),
                 event(JobEventType.SENT, 3), event(JobEventType.FAILED, 4, error="other")):  # fmt: skip
        assert apply(failed, late) is failed


def test_ready_is_final() -> None:
    ready = fold(accepted(), event(JobEventType.READY, 5, frames_total=3, frames_done=3))
    assert apply(ready, event(JobEventType.FAILED, 6, error="late")) is ready
    assert apply(ready, event(JobEventType.PROGRESS, 6, frames_total=3, frames_done=1)) is ready


@pytest.mark.parametrize("kind", [JobEventType.SENT, JobEventType.STARTED, JobEventType.READY])
def test_duplicates_change_nothing(kind: JobEventType) -> None:
    e = event(kind, 3, frames_total=10, frames_done=10)
    once = fold(accepted(), e)
    assert apply(once, e) is once


def test_started_before_sent_still_ends_sent_and_the_late_sent_is_ignored() -> None:
    # `sent` and `started` come from two relays: either may reach the topic first
    started = fold(accepted(), event(JobEventType.STARTED, 2, frames_total=10, frames_done=0))
    assert started.status == OutboxStatus.SENT
    assert apply(started, event(JobEventType.SENT, 1)) is started


def test_progress_never_goes_back_and_a_stale_estimate_is_ignored() -> None:
    state = fold(
        accepted(),
        event(JobEventType.STARTED, 1, frames_total=120, frames_done=0),  # estimated from the container
        event(JobEventType.PROGRESS, 5, frames_total=100, frames_done=60),  # the exact count
    )
    assert state.frames_total == 100 and state.progress == 0.6
    older = event(JobEventType.PROGRESS, 3, frames_total=120, frames_done=30)  # redelivered late
    after = apply(state, older)
    assert after.frames_total == 100 and after.frames_done == 60 and after.progress == 0.6


def test_events_for_an_unknown_or_deleted_job_create_nothing() -> None:
    assert apply(None, event(JobEventType.PROGRESS, 1, frames_done=3)) is None
    assert fold(accepted(), event(JobEventType.DELETED, 2)) is None
    assert fold(accepted(), event(JobEventType.DELETED, 2), event(JobEventType.READY, 3)) is None


def test_replaying_the_same_events_gives_the_same_state() -> None:
    events = [
        accepted(),
        event(JobEventType.SENT, 1),
        event(JobEventType.STARTED, 2, frames_total=40),
        event(JobEventType.PROGRESS, 3, frames_total=40, frames_done=8),
        event(JobEventType.PROGRESS, 4, frames_total=40, frames_done=20),
        event(JobEventType.READY, 5, frames_total=40, frames_done=40),
    ]
    assert fold(*events) == fold(*events) and fold(*events, *events) == fold(*events)
