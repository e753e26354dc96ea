"""Drive a local stack from outside: start `vdetect up` on free ports, upload, wait for results,
receive webhooks.

Used by the end-to-end tests, the chaos script and the benchmark; not by any service. Nothing here
relies on `assert` (it works under `python -O`): a wait that runs out raises StillWaiting."""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from events import webhooks
from events.ports import PortPlan

READY_TIMEOUT_S = 180
ISOLATED = "VDETECT_ISOLATED"
JOB_TIMEOUT_S = 240


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(count: int = 1, avoid: Collection[int] = ()) -> int:
    """The first of `count` consecutive ports that are free now, none of them in `avoid` (ports picked
    already but not listened on yet). They are picked at random below the kernel's ephemeral range: a
    port the kernel hands out (bind to port 0) may be taken again by any outgoing connection before the
    server that was meant to listen on it starts, and stacks and servers started beside each other
    (tests in parallel workers) each pick their own."""
    try:
        below = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        below = 32_768
    top = below if below - count > LOWEST_PORT + 1_000 else 65_536  # an ephemeral range set unusually low
    span, avoided = top - count - LOWEST_PORT, set(avoid)
    start = random.randrange(span)
    for step in range(span):  # from a random place on, every candidate once
        ports = range(first := LOWEST_PORT + (start + step) % span, first + count)
        if avoided.isdisjoint(ports) and all(_is_free(port) for port in ports):
            return first
    raise RuntimeError(f"no {count} free consecutive ports between {LOWEST_PORT} and {top}")


@dataclass
class Stack:
    process: subprocess.Popen
    api: str
    runner_port: int
    inference_port: int
    log: Path
    ports: dict[str, int]  # every listener by name: inference-1 and on for the further workers
    data: Path  # the stack's data folder (storage, database, logs)

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


class StillWaiting(Exception):
    """A condition did not come true in time."""


def wait_until(check, timeout: float, what: str, poll: float = 0.5):
    """Call `check` every `poll` seconds until it returns something true, and return that; StillWaiting
    after `timeout` (a check may also raise AssertionError or an HTTP transport error to mean "not yet")."""
    for attempt in Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(poll),
        retry=retry_if_exception_type((StillWaiting, AssertionError, httpx.TransportError)),
        reraise=True,
    ):
        with attempt:
            result = check()
            if not result:
                raise StillWaiting(f"still waiting for {what}")
    return result


def isolated(argv: list[str]) -> list[str]:
    """`argv` run in a network namespace of its own, with only loopback, up: there the stack's default
    ports are its own, whatever else runs on this machine. Root uses `unshare --net`; anyone else a user
    namespace too (where the kernel allows unprivileged ones)."""
    flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    script = f'ip link set lo up && {ISOLATED}=1 exec "$@"'
    return ["unshare", *flags, "--", "sh", "-c", script, "isolated", *argv]


def in_isolation() -> bool:
    """Whether this process runs in a network of its own made by `isolated`."""
    return os.environ.get(ISOLATED) == "1"


def isolate(argv: list[str]) -> None:
    """Unless this process runs in a network of its own already, replace it with `argv` run in one."""
    if not in_isolation():
        os.execvp("unshare", isolated(argv))


@contextmanager
def local_stack(
    data: Path,
    inference_workers: int = 0,
    before_ready: Callable[[Stack], None] | None = None,
    default_ports: bool = False,
    **env: str,
) -> Iterator[Stack]:
    """`vdetect up` in `data` on free ports, with extra environment; stopped with SIGTERM at the end.

    `default_ports`: on the port plan's defaults and with `vdetect up`'s own heartbeats and checkpoints
    (not the tests' quicker ones), as `make up` runs it; only where the caller has a network of its own
    (`isolated`). `before_ready` is called with the stack as soon as it has
    started the API, before it is ready."""
    workers = inference_workers if inference_workers > 0 else os.cpu_count() or 1
    chosen: dict[str, int] = {}
    taken: list[int] = []
    for name in [] if default_ports else PortPlan.names():
        count = workers if name == "inference" else 1  # the workers take the ports above inference's
        chosen[name] = free_port(count, taken)
        taken += range(chosen[name], chosen[name] + count)
    plan = PortPlan.of(chosen)
    ports = plan.listeners(workers)
    data.mkdir(parents=True, exist_ok=True)
    log = data / "stack.log"
    quicker = {} if default_ports else {"KAFKA_SESSION_TIMEOUT_MS": "4000", "RELAY_CHECKPOINT_INTERVAL_S": "1"}
    env = {**os.environ, **quicker, **env}
    argv = [sys.executable, "-m", "vdetect", "up", "--data-dir", str(data / "data")]
    argv += [arg for name, port in chosen.items() for arg in (f"--{name}-port", str(port))]
    argv += ["--inference-workers", str(inference_workers)]
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    stack = Stack(process, f"http://127.0.0.1:{plan.api}/api", plan.runner, plan.inference, log, ports,
                  data / "data")  # fmt: skip
    try:
        if before_ready:
            wait_until(lambda: any(line.get("process") == "api" for line in stack.lines()), READY_TIMEOUT_S, "start")
            before_ready(stack)
        wait_until(lambda: any(line.get("event") == "stack ready" for line in stack.lines()), READY_TIMEOUT_S, "stack")
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(90)


def upload(api: str, video: Path, **form: str) -> str:
    with video.open("rb") as content:
        files = {"file": (video.name, content, "video/mp4")}
        response = httpx.post(f"{api}/upload_video", files=files, data=form, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text}")
    return response.json()["event_id"]


def wait_finished(event_id: str, api: str, timeout: float = JOB_TIMEOUT_S, poll: float = 0.5) -> dict:
    """The job's answer once it is `ready` or `failed`; StillWaiting if it is neither in time. A 503 (the
    database is restarting: the API says when to come back) is "not yet"."""

    def finished() -> dict | None:
        response = httpx.get(f"{api}/result_video/{event_id}", timeout=30)
        if response.status_code == 503 and "Retry-After" in response.headers:
            return None
        answer = response.json()
        return answer if answer["status"] in ("ready", "failed") else None

    return wait_until(finished, timeout, f"job {event_id}", poll)


def follow(url: str, seen: list[tuple[float, dict]], read_timeout: float = 60) -> threading.Thread:
    """Read a Server-Sent Events stream in a thread, as a browser would: (arrival time, data) of each
    message is appended to `seen`; the thread ends with the stream."""

    def read() -> None:
        with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=read_timeout)) as response:
            if not response.headers["content-type"].startswith("text/event-stream"):
                raise RuntimeError(f"not an event stream: {response.status_code} {response.headers['content-type']}")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append((time.time(), json.loads(line.removeprefix("data: "))))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_ready(event_id: str, api: str) -> dict:
    answer = wait_finished(event_id, api)
    if answer["status"] != "ready":
        raise AssertionError(f"job {event_id} failed: {answer.get('error')}")
    return answer


@dataclass
class Receiver:
    """Records every POST; answers each job's attempts with the codes in `script` (then 200)."""

    port: int = 0
    script: dict[str, list[int]] = field(default_factory=dict)
    delay_s: float = 0.0
    received: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, event_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{event_id}"

    def attempts(self) -> dict[str, list[dict]]:
        by_job = defaultdict(list)
        with self.lock:
            for request in self.received:
                by_job[request["body"]["event_id"]].append(request)
        return by_job

    def delivered(self) -> set[str]:
        return {job for job, tries in self.attempts().items() if any(t["code"] == 200 for t in tries)}


@contextlib.contextmanager
def webhook_receiver(secret: str) -> Iterator[Receiver]:
    """A real HTTP server on a free loopback port that receives webhooks signed with `secret`."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the standard library's name
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            with state.lock:
                codes = state.script.get(body["event_id"], [])
                code = codes.pop(0) if codes else 200
            threading.Event().wait(state.delay_s)
            signed = webhooks.verify(secret, self.headers["X-Vdetect-Timestamp"], raw,
                                     self.headers["X-Vdetect-Signature"])  # fmt: skip
            with state.lock:
                state.received.append({"body": body, "code": code, "signed": signed, "at": time.time(),
                                       "delivery": self.headers["X-Vdetect-Delivery"],
                                       "host": self.headers["Host"]})  # fmt: skip
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
