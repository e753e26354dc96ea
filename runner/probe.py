"""Probing a video in a process of its own, bounded in memory and time.

Opening a video builds the container's index, whose size the file chooses: a 1 MB MP4 whose sample
table declares 80 million frames takes FFmpeg 3 GB. The runner therefore first opens every video here,
in a child process whose address space is capped at VIDEO_PROBE_MEMORY_MB above what its imports
take; a file that needs more fails its job, and the runner opens it itself only once it passed (the
same index then costs the runner at most that much). A crash or a hang of the demuxer costs only the
child too.

Run as `python -m runner.probe FILE MEMORY_MB`: one JSON line on stdout, `{"info": {...}}` or `{"error": "..."}`.
"""

import asyncio
import dataclasses
import json
import resource
import sys
from pathlib import Path

from runner.frames import VideoError, VideoInfo, video_info

PAGE = resource.getpagesize()


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


async def probe(path: Path, memory_mb: int, timeout_s: float) -> VideoInfo:
    """What the video declares, read in a bounded child process; VideoError with the reason otherwise."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner.probe", str(path), str(memory_mb),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await child.communicate()
    except TimeoutError:
        raise VideoError(f"opening the video took longer than {timeout_s:.0f} s (VIDEO_PROBE_TIMEOUT_S)") from None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {}
    if "info" in answer:
        return VideoInfo(**answer["info"])
    if "error" in answer:
        raise VideoError(answer["error"])
    why = f"it needs more than {memory_mb} MB of memory" if child.returncode in (-6, -9, -11, 1) else "it crashed"
    raise VideoError(f"the video could not be opened: {why} (exit {child.returncode})")


if __name__ == "__main__":
    print(json.dumps(probe_here(Path(sys.argv[1]), int(sys.argv[2]))), flush=True)
