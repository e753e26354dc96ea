"""The engines side by side on the same model and the same frames (the SD video's sampled frames, as
inference receives them): ONNX Runtime on every core, OpenVINO in f32 and in the CPU's own precision
with its latency hint (one request), and with its throughput hint (its requests at once). Each run in
this process, one after the other, after a warm-up."""

import time
from pathlib import Path

import numpy as np

from events.settings import Settings
from inference.detector import Detector, OnnxDetector
from tests.reference import model_inputs

BATCH = 8


def frames_of(video: Path, settings: Settings) -> list[np.ndarray]:
    """The frames inference detects on (`tests.reference.model_inputs`)."""
    return [image for _, image in model_inputs(video, settings)]


def frames_per_second(detector: Detector, frames: list[np.ndarray], batch: int = BATCH) -> float:
    detector.detect(frames[:batch])
    started = time.perf_counter()
    for i in range(0, len(frames), batch):
        detector.detect(frames[i : i + batch])
    return round(len(frames) / (time.perf_counter() - started), 2)


def table(video: Path, settings: Settings) -> dict:
    frames = frames_of(video, settings)
    path = settings.model_path
    rows: dict[str, float] = {"onnxruntime_cpu_all_cores": frames_per_second(OnnxDetector(path), frames, 4)}
    try:
        from inference.openvino_engine import OpenVinoDetector, cpu_precisions  # noqa: PLC0415 - x86-64 only
    except ImportError:
        return {"frames": len(frames), "size": list(frames[0].shape[1::-1]), "fps": rows, "openvino": None}
    native = "bf16" if "BF16" in cpu_precisions() else "f32"
    rows["openvino_f32_latency"] = frames_per_second(OpenVinoDetector(path, precision="f32", hint="LATENCY"), frames)
    rows[f"openvino_{native}_latency"] = frames_per_second(
        OpenVinoDetector(path, precision=native, hint="LATENCY"), frames
    )
    throughput = OpenVinoDetector(path, precision=native)
    rows[f"openvino_{native}_throughput"] = frames_per_second(throughput, frames)
    requests = next(iter(throughput.compiled.values())).__len__()
    return {"frames": len(frames), "size": list(frames[0].shape[1::-1]), "fps": rows, "throughput_requests": requests}
