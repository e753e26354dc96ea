"""Start `vdetect up` on free ports for end-to-end tests, and wait on it."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from tests.servers import bikes_video, free_port

READY_TIMEOUT_S = 180


@dataclass
class Stack:
    process: subprocess.Popen
    api: str
    runner_port: int
    inference_port: int
    log: Path

    def lines(self) -> list[dict]:
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def pid(self, name: str) -> int:
        started = [line for line in self.lines() if line.get("event") == "process started" and line["process"] == name]
        return started[-1]["pid"]


def wait_until(check, timeout: float, what: str):
    for attempt in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.5),
        retry=retry_if_exception_type((AssertionError, httpx.TransportError)),
        reraise=True,
    ):
        with attempt:
            result = check()
            assert result, f"still waiting for {what}"
    return result


@contextmanager
def local_stack(data: Path, **env: str) -> Iterator[Stack]:
    """`vdetect up` in `data` on free ports, with extra environment; stopped with SIGTERM at the end."""
    ports = {name: free_port() for name in ("mongo", "kafka", "api", "runner", "inference")}
    log = data / "stack.log"
    env = {**os.environ, "KAFKA_SESSION_TIMEOUT_MS": "6000", "RELAY_CHECKPOINT_INTERVAL_S": "1", **env}
    argv = [sys.executable, "-m", "vdetect", "up", "--data-dir", str(data / "data")]
    argv += [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    stack = Stack(process, f"http://127.0.0.1:{ports['api']}/api", ports["runner"], ports["inference"], log)
    try:
        wait_until(lambda: any(line.get("event") == "stack ready" for line in stack.lines()), READY_TIMEOUT_S, "stack")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(90)


def upload_bikes(api: str) -> str:
    with bikes_video().open("rb") as video:
        response = httpx.post(f"{api}/upload_video", files={"file": ("bikes.mp4", video, "video/mp4")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def wait_ready(event_id: str, api: str) -> dict:
    def ready() -> dict | None:
        answer = httpx.get(f"{api}/result_video/{event_id}").json()
        assert answer["status"] != "failed", answer
        return answer if answer["status"] == "ready" else None

    return wait_until(ready, 240, f"job {event_id}")
