"""Which engine runs the model (a pure rule), and the OpenVINO engine against ONNX Runtime on real frames."""

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from events.settings import Settings
from inference.agreement import f1
from inference.detector import CPU, CUDA, Detector, OnnxDetector
from inference.engines import Engine, choose
from inference.service import build_detector
from tests.reference import direct
from tests.servers import bikes_video, photo

X86: dict[str, Any] = {
    "openvino": True,
    "machine": "x86_64",
    "providers": [CPU],
    "cpu_precisions": ["BF16", "FP32", "INT8"],
}


def test_auto_is_openvino_in_the_cpus_own_precision_on_x86_64_and_onnx_runtime_elsewhere() -> None:
    assert choose("auto", "auto", "auto", **X86) == Engine("openvino", "bf16", "cpu")
    assert choose("auto", "auto", "auto", **{**X86, "cpu_precisions": ["FP32"]}) == Engine("openvino", "f32", "cpu")
    assert choose("auto", "f32", "auto", **X86) == Engine("openvino", "f32", "cpu")
    assert choose("auto", "auto", "auto", **{**X86, "machine": "aarch64"}) == Engine("onnxruntime", "f32", "cpu")
    assert choose("auto", "auto", "auto", **{**X86, "openvino": False}) == Engine("onnxruntime", "f32", "cpu")
    assert choose("onnxruntime", "auto", "cpu", **X86) == Engine("onnxruntime", "f32", "cpu")


def test_a_gpu_runs_on_onnx_runtimes_cuda_provider() -> None:
    gpu = {**X86, "providers": [CUDA, CPU]}
    assert choose("auto", "auto", "auto", **gpu) == Engine("onnxruntime", "f32", "cuda")
    assert choose("auto", "auto", "cpu", **gpu) == Engine("openvino", "bf16", "cpu")  # the GPU left alone


@pytest.mark.parametrize(
    ("engine", "precision", "device", "facts", "why"),
    [
        ("openvino", "auto", "auto", {"openvino": False}, "OpenVINO is not installed"),
        ("openvino", "auto", "cuda", {"providers": [CUDA, CPU]}, "use onnxruntime for INFERENCE_DEVICE=cuda"),
        ("onnxruntime", "bf16", "cpu", {}, "bf16 needs OpenVINO"),
    ],
)
def test_a_choice_this_machine_cannot_run_is_refused_with_the_reason(engine, precision, device, facts, why) -> None:
    with pytest.raises(ValueError, match=why):
        choose(engine, precision, device, **{**X86, **facts})


def test_the_default_engine_finds_what_onnx_runtime_finds_on_real_photos_and_video() -> None:
    settings = Settings()
    default, f32 = build_detector(settings), OnnxDetector(settings.model_path)
    assert default.engine == "openvino" and default.names == f32.names
    for name in ("bus.jpg", "zidane.jpg"):
        image = photo(name)
        (found,), (expected,) = default.detect([image]), f32.detect([image])
        assert sorted(o.class_name for o in found) == sorted(o.class_name for o in expected)
    video = bikes_video()
    agreed = f1(list(zip(direct(video, settings), direct(video, settings, f32), strict=True)))
    assert agreed >= 0.97, agreed  # bf16 against f32 on 50 frames of a real video (0.992 measured)


def test_a_batch_of_frames_of_several_sizes_gives_each_frames_own_detections() -> None:
    detector = build_detector(Settings())
    bus, zidane = photo("bus.jpg"), photo("zidane.jpg")
    together = detector.detect([bus, zidane, bus])
    alone = [detector.detect([image])[0] for image in (bus, zidane, bus)]
    assert [[o.class_name for o in f] for f in together] == [[o.class_name for o in f] for f in alone]
    assert together[0] == together[2]


def test_a_workers_engine_threads_are_not_pinned_to_one_core() -> None:
    """OpenVINO pins its threads to the first cores by default: two single-threaded workers (the local
    stack's one per core) then shared one core. A worker's threads may run on every core it is given."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: nothing to pin away from")

    def narrowest_affinity_while_detecting(detector: Detector) -> int:
        frame, running, narrowest = photo("bus.jpg"), threading.Event(), []
        detector.detect([frame])

        def detect() -> None:
            while not running.is_set():
                detector.detect([frame])

        thread = threading.Thread(target=detect)
        thread.start()
        try:
            for _ in range(20):  # the engine's threads, sampled while they work
                tasks = Path(f"/proc/{os.getpid()}/task").iterdir()
                narrowest.append(min(len(os.sched_getaffinity(int(task.name))) for task in tasks))
                time.sleep(0.02)
        finally:
            running.set()
            thread.join()
        return min(narrowest)

    worker = build_detector(Settings(inference_threads=1))
    assert narrowest_affinity_while_detecting(worker) == len(os.sched_getaffinity(0))
    pinned = build_detector(Settings(inference_threads=1), pinning=None)  # OpenVINO's default
    assert narrowest_affinity_while_detecting(pinned) == 1
