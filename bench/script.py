"""The one-process script a careful user would write, the reference the pipeline is measured against:
OpenCV reads the video, every FRAME_STRIDE-th frame is scaled to the model's size, blurred and
contrasted as the design says, letterboxed, and run on the same engine as the pipeline's (OpenVINO's
throughput hint, several frames in flight at once) while the next ones are decoded. Run in a process
of its own (`python -m bench.script VIDEO`): it prints frames, seconds and frames per second as JSON."""

import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

import cv2

from events.settings import Settings
from inference.preprocess import preprocess
from inference.service import build_detector
from runner.frames import scaled_size

IN_FLIGHT = 8  # frames handed to the engine at once (its requests run them in parallel)


def run(video: str, settings: Settings) -> dict:
    detector = build_detector(settings, pinning=None)  # OpenVINO's defaults, as a script run alone would have
    capture = cv2.VideoCapture(video)
    ok, first = capture.read()
    if not ok:
        raise SystemExit(f"{video}: not a video OpenCV reads")
    detector.detect([preprocess(cv2.resize(first, scaled_size(first.shape[1], first.shape[0], 640)))])  # warm-up
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    started, index, frames, waiting = time.perf_counter(), 0, 0, []
    running: Future | None = None
    with ThreadPoolExecutor(1) as engine:
        while capture.grab():  # every frame is decoded; only the sampled ones are converted
            if index % settings.frame_stride == 0:
                _, frame = capture.retrieve()
                size = scaled_size(frame.shape[1], frame.shape[0], settings.model_input_size)
                waiting.append(preprocess(cv2.resize(frame, size, interpolation=cv2.INTER_AREA)))
                if len(waiting) == IN_FLIGHT:
                    frames += len(running.result()) if running else 0
                    running, waiting = engine.submit(detector.detect, waiting), []
            index += 1
        frames += len(running.result()) if running else 0
        frames += len(detector.detect(waiting)) if waiting else 0
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2),
            "engine": detector.engine, "precision": detector.precision}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], Settings())))
