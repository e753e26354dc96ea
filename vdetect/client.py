"""The command-line client: submit videos, follow their progress over Server-Sent Events, fetch results.

Exit statuses: 0 when every job is ready, 1 when any failed (or is not finished), 2 on a usage or
connection error. Progress goes to stderr: bars on a terminal, one plain line per change otherwise;
stdout carries only what a script wants (event ids, tables, results).
"""

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from analytics import exports

OK, FAILED, USAGE = 0, 1, 2
FINAL = ("ready", "failed")
SUFFIXES = {".json": "json", ".csv": "csv", ".txt": "mot"}


COME_BACK = (429, 503)  # answers that say when to try again (Retry-After)
MAX_STREAMS = 8  # live update streams one `submit` keeps open (the server allows 16 per client)


def detail_of(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", answer.text))
    except ValueError:
        return answer.text


def retry_after(answer: httpx.Response) -> float:
    try:
        return min(max(float(answer.headers.get("retry-after", "5")), 1.0), 300.0)
    except ValueError:
        return 5.0


class ClientError(Exception):
    """A usage or connection error: exit status 2, with the message."""


class Api:
    def __init__(self, url: str, api_key: str | None, timeout: float = 60) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/") + "/api", headers=headers, timeout=timeout)

    def request(self, method: str, path: str, later: bool = False, **options: Any) -> httpx.Response:
        """The answer; ClientError for an error answer (but 404, and with `later` 429 and 503: come back)."""
        try:
            answer = self.http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise ClientError(f"cannot reach the API at {self.http.base_url}: {error}") from error
        if later and answer.status_code in COME_BACK and "retry-after" in answer.headers:
            return answer
        if answer.status_code >= 400 and answer.status_code != 404:
            raise ClientError(f"{method} {path}: {answer.status_code} {detail_of(answer)}")
        return answer

    def upload(
        self, video: Path, err: Console | None = None, model: str | None = None, options: dict[str, str] | None = None
    ) -> str:
        """Upload a video (`options`: the job's form fields, `track`, `zones`, `render`); while the server
        says to come back later (its queue is full, or the database restarts), wait as long as it says and
        send it again."""
        while True:
            with video.open("rb") as content:
                files = {"file": (video.name, content, "video/mp4")}
                data = {**({"model": model} if model else {}), **(options or {})} or None
                answer = self.request("POST", "/upload_video", later=True, files=files, data=data, timeout=None)
            if answer.status_code not in COME_BACK:
                return answer.json()["event_id"]
            wait = retry_after(answer)
            if err is not None:
                err.print(f"{video.name}: {detail_of(answer)}; sending it again in {wait:g} s", highlight=False)
            time.sleep(wait)

    def result(self, event_id: str) -> dict:
        answer = self.request("GET", f"/result_video/{event_id}", timeout=None)
        if answer.status_code == 404:
            raise ClientError(f"no job with event_id {event_id}")
        return answer.json()

    def events(self, event_id: str) -> Iterator[dict]:
        """The job's live updates until its final status (the stream ends there)."""
        try:
            with self.http.stream("GET", f"/jobs/{event_id}/events", timeout=httpx.Timeout(10, read=120)) as answer:
                if answer.status_code != 200:
                    raise ClientError(f"live updates of {event_id}: {answer.status_code}")
                for line in answer.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line.removeprefix("data: "))
        except httpx.HTTPError as error:
            raise ClientError(f"live updates of {event_id} broke off: {error}") from error

    def jobs(self, limit: int) -> list[dict]:
        return self.request("GET", "/status/all", params={"limit": limit}).json()["operations"]


def follow(api: Api, ids: list[str], err: Console) -> dict[str, dict]:
    """Follow every job to its end, showing progress; returns each job's last status message."""
    updates: queue.Queue[tuple[str, dict | Exception]] = queue.Queue()

    streams = threading.Semaphore(MAX_STREAMS)  # jobs run about in order: the first ones end first

    def watch(event_id: str) -> None:
        try:
            with streams:
                for message in api.events(event_id):
                    updates.put((event_id, message))
            updates.put((event_id, ClientError("the stream ended before the job did")))
        except ClientError as error:
            updates.put((event_id, error))

    for event_id in ids:
        threading.Thread(target=watch, args=(event_id,), daemon=True).start()
    last: dict[str, dict] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not err.is_terminal) as bars:
        tasks = {event_id: bars.add_task(event_id[:8], total=1.0) for event_id in ids}
        while len([j for j in last.values() if j["status"] in FINAL]) < len(ids):
            event_id, message = updates.get()
            if isinstance(message, Exception):
                if last.get(event_id, {}).get("status") not in FINAL:
                    raise message
                continue
            before, last[event_id] = last.get(event_id), message
            bars.update(tasks[event_id], completed=message["progress"],
                        description=f"{event_id[:8]} {message['status']}")  # fmt: skip
            if not err.is_terminal and (before is None or (before["status"], before["progress"]) !=
                                        (message["status"], message["progress"])):  # fmt: skip
                line = f"{event_id} {message['status']} {round(100 * message['progress'])}%"
                if message.get("error"):
                    line += f" {message['error']}"
                err.print(line, highlight=False, soft_wrap=True)
    return last


def output_format(path: Path, chosen: str | None, jobs: int = 1) -> exports.Format:
    """`--format`, or the one `--output`'s suffix names (.json, .csv, .txt: MOT); ClientError otherwise."""
    found = cast(exports.Format | None, chosen or SUFFIXES.get(path.suffix.lower()))
    if found is None:
        raise ClientError(f"--output must end in .json, .csv or .txt (MOT), or give --format: {path}")
    if found in ("mot", "coco") and jobs > 1:
        raise ClientError(f"--format {found} holds one job: give one video, or --format json or csv")
    return found


def write_output(path: Path, answers: list[dict], chosen: str | None = None) -> None:
    """The results as `--format` (or the suffix) says: the answers as JSON, CSV rows of every job, MOT text
    or COCO JSON (one job)."""
    found = output_format(path, chosen, len(answers))
    with path.open("w", newline="") as out:
        if found == "json":
            out.write(json.dumps(answers[0] if len(answers) == 1 else answers))
            return
        for number, answer in enumerate(answers):  # several only for CSV, one header
            out.writelines(exports.text(found, answer, frames_of(answer), number == 0))


def frames_of(answer: dict) -> Callable[[], list[dict]]:
    return lambda: answer.get("prediction", [])


def job_fields(track: bool | None, zones: str | None, render: bool) -> dict[str, str]:
    """The upload's form fields for the job's options; `zones` is JSON or `@file` holding JSON."""
    fields = {"render": "true"} if render else {}
    if track is not None:
        fields["track"] = "true" if track else "false"
    if zones:
        if zones.startswith("@"):
            try:
                zones = Path(zones[1:]).read_text()
            except OSError as error:
                raise ClientError(f"--zones: cannot read {zones[1:]}: {error.strerror}") from None
        try:
            json.loads(zones)
        except ValueError:
            raise ClientError('--zones must be JSON: [{"name": ..., "line": [[x1, y1], [x2, y2]]}, ...]') from None
        fields["zones"] = zones
    return fields


def submit(
    files: list[Path], url: str, api_key: str | None, wait: bool, output: Path | None, model: str | None = None,
    options: dict[str, str] | None = None, chosen: str | None = None,
) -> int:  # fmt: skip
    out, err = Console(), Console(stderr=True)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ClientError(f"no such file: {', '.join(missing)}")
    if output is not None:
        output_format(output, chosen, len(files))
    api = Api(url, api_key)
    ids = []
    for video in files:
        ids.append(api.upload(video, err, model, options))
        out.print(ids[-1], highlight=False)
    if not wait and output is None:
        return OK
    last = follow(api, ids, err)
    if output is not None:
        write_output(output, [api.result(event_id) for event_id in ids], chosen)
    failed = [event_id for event_id in ids if last[event_id]["status"] != "ready"]
    for event_id in failed:
        err.print(f"{event_id} failed: {last[event_id].get('error')}", highlight=False, soft_wrap=True)
    return FAILED if failed else OK


def jobs(url: str, api_key: str | None, limit: int) -> int:
    table = Table("job", "file", "status", "progress", "eta", "time", "error", box=None)
    for op in Api(url, api_key).jobs(limit):
        eta = f"{op['eta_seconds']:.0f}s" if op.get("eta_seconds") is not None and op["status_code"] == "sent" else ""
        table.add_row(op["video_id"], op.get("file_name") or "", op["status_code"], f"{100 * op['progress']:.0f}%", eta,
                      op["processing_time_formatted"], op.get("error") or "")  # fmt: skip
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return OK


def status(url: str, api_key: str | None) -> int:
    """The stack's health: 0 every service running, 1 some down (each printed with its reason)."""
    health = Api(url, api_key).request("GET", "/health").json()
    if not health.get("down"):
        sys.stdout.write(f"{health['status']}: every service is running\n")
        return OK
    table = Table("service", "state", "restarts", "reason", box=None)
    for down in health["down"]:
        table.add_row(down["name"], down["state"], str(down["restarts"]), down.get("reason") or "")
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return FAILED


def result(event_id: str, url: str, api_key: str | None, output: Path | None, chosen: str | None = None) -> int:
    if output is not None:
        output_format(output, chosen)
    answer = Api(url, api_key).result(event_id)
    if output is not None and answer["status"] == "ready":
        write_output(output, [answer], chosen)
    elif output is None:
        sys.stdout.write(json.dumps(answer) + "\n")
    if answer["status"] != "ready":
        Console(stderr=True).print(f"{event_id} is {answer['status']}: {answer.get('error') or ''}", highlight=False)
        return FAILED
    return OK
