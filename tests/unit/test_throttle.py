"""The S3 relay's progress throttle (`relays.s3.Throttle`) with a publisher of the test's own."""

from events.contracts import JobEvent, JobEventType
from relays.s3 import Throttle


def progress(job: str, done: int) -> JobEvent:
    return JobEvent(event_id=job, type=JobEventType.PROGRESS, frames_total=10, frames_done=done)


async def test_a_job_forgotten_while_held_progress_is_published_is_skipped_not_a_crash() -> None:
    """Publishing awaits the broker: meanwhile a job may finish (forgotten) or change again (offered)."""
    published: list[tuple[str, int | None]] = []

    async def publish(event: JobEvent) -> None:
        published.append((event.event_id, event.frames_done))
        if event.event_id == "a":  # while the first is published, the others move on
            throttle.forget("b")
            await throttle.offer(progress("c", 3))

    throttle = Throttle(publish, interval=0)
    throttle.held = {"a": progress("a", 1), "b": progress("b", 1), "c": progress("c", 1)}
    await throttle.flush()
    assert published == [("a", 1), ("c", 3)]  # b is gone; c goes out once, with its latest progress
    assert throttle.held == {}
