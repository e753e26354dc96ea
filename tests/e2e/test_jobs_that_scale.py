"""Jobs that scale, on the local stack: large results, backlogs, outages, odd videos, a deleted bucket,
a database killed right after it acknowledged an upload.

The stall timeout is 5 s and one resend is allowed, so anything taken for a stall would show at once.
"""

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.harness import Stack, local_stack, upload, wait_finished, wait_ready, wait_until
from tests.servers import bikes_video, photo

pytestmark = pytest.mark.e2e
STALL_TIMEOUT_S = 5
LONG_FRAMES = 220
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(
        tmp_path_factory.mktemp("scale"),
        STALL_TIMEOUT_S=str(STALL_TIMEOUT_S),
        MAX_RESENDS="1",
        FRAME_STRIDE="1",
        CONF_THRESHOLD="0",  # every candidate box: a dense result from a short clip
        IOU_THRESHOLD="0.7",  # about 1,550 boxes a frame survive NMS (650 at 0.45)
        ALLOWED_BUCKETS="videos,doomed",
        MAX_DETECTIONS="2000",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    source = cv2.VideoCapture(str(bikes_video()))
    frames = []
    while (read := source.read())[0]:
        frames.append(read[1])
    long = folder / "bikes-220.mp4"  # 220 frames of 640x272
    writer = cv2.VideoWriter(str(long), cv2.VideoWriter.fourcc(*"mp4v"), 25, (640, 272))
    for frame in frames[:LONG_FRAMES]:
        writer.write(frame)
    writer.release()
    eight_k = folder / "8k.mp4"  # the bus photo in the middle of a 7680x4320 frame
    bus = cv2.resize(photo("bus.jpg"), (3240, 4320))
    canvas = np.full((4320, 7680, 3), 90, np.uint8)
    canvas[:, 2220:5460] = bus
    writer = cv2.VideoWriter(str(eight_k), cv2.VideoWriter.fourcc(*"mp4v"), 10, (7680, 4320))
    for _ in range(2):
        writer.write(canvas)
    writer.release()
    short = folder / "short.mp4"  # the first 40 frames of bikes.mp4
    writer = cv2.VideoWriter(str(short), cv2.VideoWriter.fourcc(*"mp4v"), 25, (640, 272))
    for frame in frames[:40]:
        writer.write(frame)
    writer.release()
    return {"long": long, "8k": eight_k, "short": short}


def status(stack: Stack, event_id: str) -> dict:
    return httpx.get(f"{stack.api}/result_video/{event_id}", timeout=30).json()


def runner_health(stack: Stack) -> dict:
    return httpx.get(f"http://127.0.0.1:{stack.runner_port}/health", timeout=10).json()


def stall_resends(stack: Stack) -> int:
    """Resends judged by a job's stall, not by the broker's end offsets. Tansu's in-memory log at times
    answers a partition's end below messages it acknowledged (here about one run in five), and its fetches
    stop at that end too, until the next message arrives there; the runner then sends the job's missing
    frames again, which the workers do get: `lost_resends` counts those."""
    health = runner_health(stack)
    return health["resends"] - health["lost_resends"]


def test_an_8k_video_ends_ready_with_boxes_in_its_own_pixels(stack: Stack, videos) -> None:
    answer = wait_ready(upload(stack.api, videos["8k"]), stack.api)
    assert [f["frame"] for f in answer["prediction"]] == [0, 1]
    buses = [o for o in answer["prediction"][0]["objects"] if o["class"] == "bus" and o["conf"] > 0.5]
    assert buses, "the bus is found"
    x1, y1, x2, y2 = buses[0]["box"]
    assert x1 > 2220 - 100 and x2 < 5460 + 100 and x2 - x1 > 2000 and y2 <= 4320  # 8K pixels, not 640's


def test_a_video_the_decoder_cannot_handle_ends_failed_with_a_clear_reason(stack: Stack, tmp_path) -> None:
    unknown = tmp_path / "unknown-codec.mp4"
    unknown.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(50_000))
    answer = wait_finished(upload(stack.api, unknown), stack.api)
    assert answer["status"] == "failed" and "video" in answer["error"]


def test_a_job_whose_bucket_is_deleted_after_upload_fails_and_the_next_job_is_ready(stack: Stack, videos) -> None:
    with videos["short"].open("rb") as video:
        response = httpx.post(f"{stack.api}/upload_video", files={"file": ("s.mp4", video)},
                              data={"bucket": "doomed"}, timeout=60)  # fmt: skip
    doomed = response.json()["event_id"]
    shutil.rmtree(Path(stack.data) / "storage" / "doomed")
    following = upload(stack.api, videos["short"])
    failed = wait_finished(doomed, stack.api, timeout=120)
    assert failed["status"] == "failed" and "doomed" in failed["error"]
    assert len(wait_ready(following, stack.api)["prediction"]) == 40


def test_a_job_acknowledged_just_before_the_database_is_killed_completes(stack: Stack, videos) -> None:
    event_id = upload(stack.api, videos["short"])
    os.kill(stack.pid("secantusdb"), signal.SIGKILL)  # right after the 200: the stack starts it again
    answer = wait_ready(event_id, stack.api)
    assert len(answer["prediction"]) == 40


def test_while_the_database_is_down_uploads_get_503_with_retry_after_and_leave_nothing(stack: Stack, videos) -> None:
    inputs = Path(stack.data) / "storage" / "videos" / "input"
    before = set(inputs.iterdir())
    database = stack.pid("secantusdb")
    os.kill(database, signal.SIGSTOP)  # unreachable: it answers nothing, as a dead host would
    try:
        started = time.monotonic()
        with videos["short"].open("rb") as video:
            response = httpx.post(f"{stack.api}/upload_video", files={"file": ("s.mp4", video)}, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        os.kill(database, signal.SIGCONT)
    assert response.status_code == 503 and elapsed < 8, (response.status_code, elapsed)
    assert int(response.headers["Retry-After"]) > 0 and "database" in response.json()["detail"]
    assert set(inputs.iterdir()) == before  # no orphan video
    wait_until(lambda: httpx.get(f"{stack.api}/status/all", timeout=10).status_code == 200, 60, "database back")


OUTAGE_S = 3 * STALL_TIMEOUT_S  # well past the stall timeout, and past the runner's grace after it


def test_a_large_result_a_backlog_and_an_inference_outage_only_delay(stack: Stack, videos) -> None:
    """220 frames at about 1,550 boxes each (> 16 MB of results) fill the queue; a short job waits behind
    them; then every inference worker is frozen for 3x the stall timeout. Nothing is resent for waiting, all end
    ready."""
    before = stall_resends(stack)
    large = upload(stack.api, videos["long"])
    wait_until(lambda: status(stack, large)["status"] == "sent", 60, "the large job taken", poll=0.1)
    behind = upload(stack.api, videos["short"])
    workers = [stack.pid(name) for name in ("inference", "inference-1")]
    wait_until(lambda: (status(stack, large)["frames_done"] or 0) > 0, 60, "frames detected", poll=0.1)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # an outage: the workers hold their frames and answer nothing
    try:
        time.sleep(OUTAGE_S)
        assert httpx.get(f"{stack.api}/result_video/{behind}", timeout=10).json()["status"] == "sent"
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    started = time.monotonic()
    assert len(wait_ready(behind, stack.api)["prediction"]) == 40
    waited = time.monotonic() - started + OUTAGE_S
    response = httpx.get(f"{stack.api}/result_video/{large}", timeout=120)
    while response.json().get("status") != "ready":
        time.sleep(1)
        response = httpx.get(f"{stack.api}/result_video/{large}", timeout=120)
    answer = response.json()
    assert [f["frame"] for f in answer["prediction"]] == list(range(LONG_FRAMES))
    detection = Path(stack.data) / "storage" / "videos" / "detection" / f"{large}.json"
    assert detection.stat().st_size > 16 * MiB and len(response.content) > 16 * MiB
    assert stall_resends(stack) == before  # waiting was never taken for stalling
    assert workers == [stack.pid(name) for name in ("inference", "inference-1")]  # no worker restarted
    print(
        f"\nlarge result: {detection.stat().st_size / MiB:.1f} MiB in the file, {len(response.content) / MiB:.1f} "
        f"MiB answered; the short job waited {waited:.0f}s ({waited / STALL_TIMEOUT_S:.0f}x the stall timeout)"
    )
