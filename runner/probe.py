"""Probing a video in a process of its own, bounded in memory and time.

Opening a video builds the container's index, whose size the file chooses: a 1 MB MP4 whose sample
table declares 80 million frames takes FFmpeg 3 GB. The runner therefore first opens every video here,
in a child process whose address space is capped at VIDEO_PROBE_MEMORY_MB above what its imports
take; a file that needs more fails its job, and the runner opens it itself only once it passed (the
same index then costs the runner at most that much). A crash or a hang of the demuxer costs only the
child too.

The child is forked from a fork server that has this module (PyAV, OpenCV, NumPy) imported already:
starting a fresh interpreter for each job cost 0.2 s and 0.3 s of CPU; a fork costs milliseconds.
`python -m runner.probe FILE MEMORY_MB` runs the same check by hand: one JSON line on stdout.
"""

import asyncio
import dataclasses
import json
import multiprocessing
import resource
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from runner.frames import VideoError, VideoInfo, video_info

PAGE = resource.getpagesize()
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload([__name__])


def address_space() -> int:
    """This process's virtual memory now, in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[0]) * PAGE


def probe_here(path: Path, memory_mb: int) -> dict[str, object]:
    """In the child: cap the address space, open the video, say what it declares."""
    limit = address_space() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        return {"info": dataclasses.asdict(video_info(path))}
    except VideoError as error:
        return {"error": str(error)}
    except MemoryError:
        return {"error": f"opening the video needs more than {memory_mb} MB of memory (VIDEO_PROBE_MEMORY_MB)"}


def _child(path: str, memory_mb: int, answer: Connection) -> None:
    answer.send(probe_here(Path(path), memory_mb))


async def probe(path: Path, memory_mb: int, timeout_s: float) -> VideoInfo:
    """What the video declares, read in a bounded child process; VideoError with the reason otherwise."""
    receive, send = FORKS.Pipe(duplex=False)
    child = FORKS.Process(target=_child, args=(str(path), memory_mb, send), daemon=True)
    try:
        await asyncio.to_thread(child.start)  # the first start also starts the fork server
        send.close()
        if not await asyncio.to_thread(receive.poll, timeout_s):  # True once it answered or died
            raise VideoError(f"opening the video took longer than {timeout_s:.0f} s (VIDEO_PROBE_TIMEOUT_S)")
        try:
            answer = receive.recv()
        except (EOFError, OSError):
            answer = {}
    finally:
        if child.is_alive():
            child.kill()
        if child.pid is not None:
            await asyncio.to_thread(child.join)
        receive.close()
    if "info" in answer:
        return VideoInfo(**answer["info"])
    if "error" in answer:
        raise VideoError(answer["error"])
    why = f"it needs more than {memory_mb} MB of memory" if child.exitcode in (-6, -9, -11, 1) else "it crashed"
    raise VideoError(f"the video could not be opened: {why} (exit {child.exitcode})")


if __name__ == "__main__":
    print(json.dumps(probe_here(Path(sys.argv[1]), int(sys.argv[2]))), flush=True)
