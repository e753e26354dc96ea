"""The frame store: frames handed from the runner to the inference workers through files on a memory
filesystem (FRAME_STORE_DIR, tmpfs: `/dev/shm`) when they share a machine, as in the local stack. The
frame message then carries its header only (`InferenceTask.stored`): its bytes skip the broker, which
would copy them five times (the producer's batch, the broker's log and its answer, the consumer's
buffer and its record).

Layout: `{FRAME_STORE_DIR}/{job}/{frame}`. A file is written whole (a temporary name, then renamed), and
deleted once the frame's result is stored; a job's folder goes when the job is over (and the runner's
sweep removes any left behind by a runner that died). FRAME_STORE_MAX_MB bounds what one runner keeps
there; beyond it, or when the filesystem is full, a frame travels in its message as before. A worker
that finds no file answers nothing (`FrameGone`): the frame's result was stored already, its job is
over, or the store was wiped (a reboot) and the runner's stall check sends it again.
"""

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from events.contracts import InferenceTask
from events.log import get_logger

log = get_logger(__name__)
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # what a job's folder may be named: never a path of its own


class FrameGone(Exception):
    """The frame's file is not in the store (any more): nothing to detect, nothing to answer."""


@dataclass
class FrameStore:
    root: Path
    max_bytes: int  # FRAME_STORE_MAX_MB: what this process keeps in the store at most
    held: dict[str, dict[int, int]] = field(default_factory=dict)  # job -> frame -> bytes this process wrote
    used: int = 0
    full: bool = False  # the last write found the filesystem full: logged once until a write succeeds

    def __post_init__(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def folder(self, event_id: str) -> Path:
        if not JOB_ID.fullmatch(event_id):
            raise ValueError("the frame's job id cannot name a folder of the frame store")
        return self.root / event_id

    def put(self, task: InferenceTask) -> InferenceTask:
        """The task with its image in the store (`stored`, no bytes in the message), or as it was when
        the store is over FRAME_STORE_MAX_MB or its filesystem is full."""
        size = len(task.image)
        if self.used + size > self.max_bytes:
            return task
        folder = self.folder(task.event_id)
        temporary = folder / f".{task.frame}.{os.getpid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            temporary.write_bytes(task.image)
            temporary.replace(folder / str(task.frame))
        except OSError as error:  # ENOSPC above all: the frame goes in its message
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            if not self.full:
                log.warning("frame store unusable, frames go through the broker", error=str(error)[:200])
            self.full = True
            return task
        self.full = False
        frames = self.held.setdefault(task.event_id, {})
        self.used += size - frames.get(task.frame, 0)
        frames[task.frame] = size
        return task.model_copy(update={"stored": True, "image": b""})

    def read(self, task: InferenceTask) -> bytes:
        """A stored frame's bytes (the worker's side); FrameGone if its file is not there."""
        try:
            return (self.folder(task.event_id) / str(task.frame)).read_bytes()
        except FileNotFoundError:
            raise FrameGone(f"frame {task.frame} of job {task.event_id} is no longer in the frame store") from None

    def discard(self, event_id: str, frames: Iterable[int]) -> None:
        """The frames' results are stored: their files go (those of another runner too)."""
        if not JOB_ID.fullmatch(event_id):
            return
        mine = self.held.get(event_id, {})
        for frame in frames:
            self.used -= mine.pop(frame, 0)
            with contextlib.suppress(OSError):
                (self.root / event_id / str(frame)).unlink()
        if event_id in self.held and not mine:
            del self.held[event_id]

    def drop_job(self, event_id: str) -> None:
        """The job is over (complete, failed, deleted): its folder goes."""
        self.used -= sum(self.held.pop(event_id, {}).values())
        if JOB_ID.fullmatch(event_id):
            shutil.rmtree(self.root / event_id, ignore_errors=True)

    def jobs(self) -> list[str]:
        """The jobs that have a folder in the store (the sweep's candidates)."""
        try:
            return [entry.name for entry in os.scandir(self.root) if entry.is_dir() and JOB_ID.fullmatch(entry.name)]
        except OSError:
            return []


def frame_store(directory: Path | None, max_mb: int) -> FrameStore | None:
    """The store FRAME_STORE_DIR names, or None (unset, or a folder that cannot be made: frames then go
    through the broker, which every deployment can do)."""
    if directory is None:
        return None
    try:
        return FrameStore(directory, max_mb * 1024 * 1024)
    except OSError as error:
        log.warning("frame store unusable, frames go through the broker", error=str(error)[:200])
        return None
