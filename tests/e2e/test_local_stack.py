"""End to end: `vdetect up` on free ports, a real video uploaded over HTTP, detections back."""

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import bikes_video
from vdetect.harness import Stack, local_stack, upload, wait_finished, wait_ready, wait_until

pytestmark = pytest.mark.e2e


def kill_the_runner(stack: Stack) -> None:
    os.kill(stack.pid("runner"), signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # the runner is killed while the stack still waits for its services to be ready
    with local_stack(tmp_path_factory.mktemp("stack"), before_ready=kill_the_runner) as running:
        yield running


def test_the_stack_supervises_from_its_first_second(stack: Stack) -> None:
    events = [(line.get("event"), line.get("process")) for line in stack.lines()]
    exited = events.index(("process exited, restarting", "runner"))
    restarted = events.index(("process started", "runner"), exited)
    assert restarted < events.index(("stack ready", None))  # not after a readiness wait of up to 180 s


def test_a_real_video_uploaded_over_http_comes_back_with_detections(stack: Stack) -> None:
    started = time.monotonic()
    with bikes_video().open("rb") as video:
        response = httpx.post(f"{stack.api}/upload_video", files={"file": ("bikes.mp4", video, "video/mp4")},
                              data={"bucket": "videos"}, timeout=60)  # fmt: skip
    assert response.status_code == 200
    upload = response.json()
    assert set(upload) == {"status", "event_id"} and upload["status"] == "ok"
    answer = wait_ready(upload["event_id"], stack.api)
    elapsed = time.monotonic() - started
    assert set(answer) == {"status", "event_id", "prediction", "processing_time_seconds", "processing_time_formatted"}
    assert answer["event_id"] == upload["event_id"]
    assert isinstance(answer["processing_time_seconds"], float) and answer["processing_time_formatted"].endswith("s")
    frames = answer["prediction"]
    assert [f["frame"] for f in frames] == list(range(0, 250, 5))
    for frame in frames:
        assert set(frame) == {"frame", "objects"}
        for obj in frame["objects"]:
            assert set(obj) == {"class", "box", "conf"}
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 272  # pixels of the 640x272 original
            assert 0.25 <= obj["conf"] <= 1
    with_cars = sum(any(o["class"] == "car" for o in f["objects"]) for f in frames)
    assert with_cars > len(frames) / 2
    with_objects = sum(bool(f["objects"]) for f in frames)
    print(f"\nbikes.mp4 end to end: {elapsed:.1f}s, {len(frames)} frames, {with_objects} with detections, "
          f"{with_cars} with cars")  # fmt: skip

    operations = httpx.get(f"{stack.api}/status/all").json()
    mine = next(o for o in operations["operations"] if o["video_id"] == upload["event_id"])
    assert set(mine) >= {"video_id", "status_code", "status_description", "processing_time_seconds",
                         "processing_time_formatted"}  # fmt: skip
    assert mine["status_code"] == "ready" and operations["total"] == len(operations["operations"])
    assert httpx.get(f"http://127.0.0.1:{stack.runner_port}/health").json()["status"] == "ok"
    data = httpx.get(f"http://127.0.0.1:{stack.inference_port}/api/data").json()
    assert data["frames_processed"] > 0 and data["classes"] == 80  # one of the workers: they share the frames


def test_request_reprocesses_a_stored_video_then_cleanup_empties_everything(stack: Stack) -> None:
    with bikes_video().open("rb") as video:
        source = httpx.post(f"{stack.api}/upload_video", files={"file": ("b.mp4", video)}, timeout=60).json()
    answer = httpx.post(f"{stack.api}/request", json={"object": f"input/{source['event_id']}.mp4"})
    assert answer.status_code == 200
    again = wait_ready(answer.json()["event_id"], stack.api)
    first = wait_ready(source["event_id"], stack.api)
    assert again["prediction"] == first["prediction"]  # same video, same model, same detections
    cleaned = httpx.delete(f"{stack.api}/cleanup/all").json()
    assert cleaned["status"] == "ok" and cleaned["jobs_deleted"] >= 2
    assert httpx.get(f"{stack.api}/status/all").json() == {"operations": [], "total": 0}
    assert httpx.get(f"{stack.api}/result_video/{source['event_id']}").status_code == 404


def test_a_corrupt_video_ends_failed_with_its_reason(stack: Stack, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 5000)  # looks like MP4, is not
    answer = wait_finished(upload(stack.api, corrupt), stack.api)
    assert answer["status"] == "failed" and "video" in answer["error"]
    (operation,) = [
        o for o in httpx.get(f"{stack.api}/status/all").json()["operations"] if o["video_id"] == answer["event_id"]
    ]
    assert operation["status_code"] == "failed" and operation["error"] == answer["error"]


def test_a_service_that_dies_is_restarted(stack: Stack) -> None:
    old = stack.pid("runner")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: stack.pid("runner") != old, 60, "runner restart")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{stack.runner_port}/health").status_code == 200, 60, "health")


def test_sigterm_stops_the_whole_stack_cleanly(stack: Stack) -> None:
    pids = [
        stack.pid(name) for name in ("api", "runner", "inference", "outbox-relay", "s3-relay", "tansu", "secantusdb")
    ]
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(90) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any(line.get("event") == "stack stopped" for line in stack.lines())
