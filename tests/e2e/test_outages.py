"""Outages in the middle of a run: Tansu, SecantusDB or the object store dies and comes back.

Every job must still end `ready`, with its detection file written once. The stack runs on S3
(a real s3rver) here, so that storage can go away too; the stall timeout is short so that lost
messages are sent again within the test's patience. Each outage starts while the jobs' frames are
being detected, and must hit work in flight: after the broker's loss something is sent again; the
storage stays down until a job's write has met it.
"""

import os
import signal
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Stack, local_stack, upload, wait_finished, wait_ready, wait_until
from tests.servers import Server, bikes_video, running, s3rver

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(s3rver(tmp_path_factory.mktemp("s3rver"))) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3: Server) -> Iterator[Stack]:
    with local_stack(
        tmp_path_factory.mktemp("outages"),
        STALL_TIMEOUT_S="5",
        MAX_RESENDS="1",
        STORAGE_BACKEND="s3",
        MINIO_ENDPOINT=f"127.0.0.1:{s3.port}",
        MINIO_ACCESS_KEY="S3RVER",
        MINIO_SECRET_KEY="S3RVER",
    ) as running_stack:
        yield running_stack


RESENT = ("job stalled: frames lost, resending the missing ones", "job event lost, sent again",
          "commit refused after a rebalance; messages will be redelivered")  # fmt: skip
STORAGE_RETRIED = ("Retrying (",)  # urllib3, under the S3 client's own retries


def count(lines: list[dict], events: tuple[str, ...]) -> int:
    return sum(1 for line in lines if str(line.get("event", "")).startswith(events))


def in_flight(stack: Stack, jobs: list[str]) -> bool:
    """Mid-run: some of the jobs' frames are detected, none of the jobs is finished."""
    operations = httpx.get(f"{stack.api}/status/all", timeout=10).json()["operations"]
    done = [op["frames_done"] or 0 for op in operations if op["video_id"] in jobs]
    return (
        len(done) == len(jobs)
        and sum(done) > 0
        and all(op["status_code"] == "sent" for op in operations if op["video_id"] in jobs)
    )


@pytest.mark.parametrize("victim", ["tansu", "secantusdb", "storage"])
def test_every_job_ends_ready_after_an_outage(stack: Stack, s3: Server, victim: str) -> None:
    jobs = [upload(stack.api, bikes_video()) for _ in range(2)]
    wait_until(lambda: in_flight(stack, jobs), 60, "frames being detected", poll=0.1)
    before = len(stack.lines())
    if victim == "storage":
        s3.stop()  # down until a write of a job has hit the outage (and is being retried), then back
        wait_until(lambda: count(stack.lines()[before:], STORAGE_RETRIED), 120, "a write hitting the outage")
        s3.start()
    else:
        os.kill(stack.pid(victim), signal.SIGKILL)  # the stack starts it again, as docker would
    for event_id in jobs:
        answer = wait_ready(event_id, stack.api)
        assert [frame["frame"] for frame in answer["prediction"]] == list(range(0, 250, 5))
    written = Counter(
        line["event_id"]
        for line in stack.lines()
        if line.get("event") == "job outcome written" and line.get("event_id") in jobs
    )
    assert written == dict.fromkeys(jobs, 1)  # each detection file written exactly once
    if victim == "tansu":  # the broker lost what it held: frames or events in flight were sent again
        assert count(stack.lines()[before:], RESENT) > 0


@pytest.fixture(scope="module")
def patient_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stall timeout far beyond the test's patience, and one counted resend allowed: only what is known
    to be gone may be sent again, and what the broker lost does not count."""
    with local_stack(tmp_path_factory.mktemp("patient"), STALL_TIMEOUT_S="600", MAX_RESENDS="1") as running_stack:
        yield running_stack


def test_what_a_restarted_broker_lost_is_sent_again_at_once_and_never_fails_a_job(patient_stack: Stack) -> None:
    stack = patient_stack
    jobs = [upload(stack.api, bikes_video()) for _ in range(2)]
    wait_until(lambda: in_flight(stack, jobs), 60, "frames being detected", poll=0.1)
    before = len(stack.lines())
    os.kill(stack.pid("tansu"), signal.SIGKILL)
    for event_id in jobs:  # long before STALL_TIMEOUT_S
        answer = wait_finished(event_id, stack.api, timeout=120)
        assert answer["status"] == "ready", answer.get("error")
        assert [frame["frame"] for frame in answer["prediction"]] == list(range(0, 250, 5))
    resent = [line for line in stack.lines()[before:] if str(line.get("event", "")).startswith(RESENT[:2])]
    assert resent and not [line for line in resent if str(line.get("why")).startswith("no progress for")]
