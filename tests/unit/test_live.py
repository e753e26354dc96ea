"""The live update stream's decisions (api.live.Shown): what is shown, what ends a stream, what is read again."""

from datetime import UTC, datetime

from api.jobs import JobView
from api.live import GONE, Shown
from events.contracts import JobState, OutboxPayload
from events.statuses import OutboxStatus


def doc(job: str, version: int, status: str = "sent") -> dict:
    return {"_id": job, "version": version, "status": status, "created_at": datetime(2026, 12, 2, tzinfo=UTC),
            "payload": {"bucket": "videos", "object": f"input/{job}.mp4"}}  # fmt: skip


def view(job: str, version: int, status: OutboxStatus = OutboxStatus.SENT) -> JobView:
    state = JobState(id=job, version=version, status=status, payload=OutboxPayload(bucket="videos", object="x"))
    return JobView(state, datetime.now(UTC) if status == OutboxStatus.READY else None)


def test_a_version_once_shown_is_never_shown_again_nor_an_older_one() -> None:
    shown = Shown(None)
    assert shown.fresh([doc("a", 1), doc("b", 0)]) == [doc("a", 1), doc("b", 0)]
    shown.show(view("a", 1))
    shown.show(view("b", 0))
    assert shown.fresh([doc("a", 1), doc("a", 0), doc("b", 0)]) == []  # a reread brings what was shown
    assert shown.fresh([doc("a", 2)]) == [doc("a", 2)]


def test_a_final_status_is_kept_by_nobody_and_ends_only_a_jobs_own_stream() -> None:
    every = Shown(None)
    every.show(view("a", 3))
    every.show(view("a", 4, OutboxStatus.READY))
    assert every.versions == {} and not every.over  # memory stays bounded; the all-jobs stream goes on
    own = Shown("a")
    own.show(view("a", 3))
    assert not own.over
    own.show(view("a", 4, OutboxStatus.FAILED))
    assert own.over


def test_what_a_listeners_changes_call_for() -> None:
    every, own = Shown(None), Shown("a")
    assert every.after({"a": doc("a", 1)}, resync=True) == ("reread", [])  # changes may have been missed
    assert own.after({"a": GONE}, resync=False) == ("end", [])  # its job was deleted
    assert every.after({"a": GONE}, resync=False) == ("show", [])  # another job's deletion: nothing to show
    assert every.after({}, resync=False) == ("keepalive", [])
    assert every.after({"a": doc("a", 2), "b": GONE}, resync=False) == ("show", [doc("a", 2)])
