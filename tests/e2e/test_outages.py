"""Outages in the middle of a run: Tansu, SecantusDB or the object store dies and comes back.

Every job must still end `ready`, with its detection file written once. The stack runs on S3
(a real s3rver) here, so that storage can go away too; the stall timeout is short so that lost
messages are sent again within the test's patience.
"""

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.servers import Server, bikes_video, running, s3rver
from vdetect.harness import Stack, local_stack, upload, wait_ready

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


@pytest.mark.parametrize("victim", ["tansu", "secantusdb", "storage"])
def test_every_job_ends_ready_after_an_outage(stack: Stack, s3: Server, victim: str) -> None:
    jobs = [upload(stack.api, bikes_video()) for _ in range(2)]
    time.sleep(1.5)  # mid-run: frames are being detected
    if victim == "storage":
        s3.stop()
        time.sleep(5)
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
