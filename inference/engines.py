"""Which engine runs the model (INFERENCE_ENGINE, INFERENCE_PRECISION, INFERENCE_DEVICE), as a pure rule,
and the detector it builds.

`auto` is OpenVINO on an x86-64 CPU where it is installed (the bench on the default model, 640x480
frames, 2 cores: 34.8 to 42.5 frames/s with ONNX Runtime, 42.5 to 57.2 with OpenVINO in f32, 76.0 to
87.5 in bf16), and
ONNX Runtime otherwise: on other CPUs, and on a GPU (its CUDA provider). Precision `auto` is bf16 where
the CPU computes it natively (AMX, AVX-512 BF16), f32 elsewhere; ONNX Runtime computes in f32."""

import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path

from inference.detector import CUDA, Detector, OnnxDetector, execution_providers

X86_64 = ("x86_64", "amd64")


@dataclass(frozen=True)
class Engine:
    name: str  # "openvino" or "onnxruntime"
    precision: str  # "bf16" or "f32"
    device: str  # "cpu" or "cuda"


def choose(engine: str, precision: str, device: str, *, openvino: bool, machine: str, providers: list[str],
           cpu_precisions: list[str]) -> Engine:  # fmt: skip
    """The engine for the settings on this machine; ValueError for a choice the machine cannot run."""
    on_gpu = CUDA in execution_providers(device, providers)
    if engine == "openvino" and not openvino:
        raise ValueError("INFERENCE_ENGINE=openvino, but OpenVINO is not installed (pip install openvino)")
    if engine == "openvino" and on_gpu and device == "cuda":
        raise ValueError("INFERENCE_ENGINE=openvino runs on the CPU here: use onnxruntime for INFERENCE_DEVICE=cuda")
    use_openvino = engine == "openvino" or (engine == "auto" and openvino and not on_gpu
                                            and machine.lower() in X86_64)  # fmt: skip
    if not use_openvino:
        if precision == "bf16":
            raise ValueError("INFERENCE_PRECISION=bf16 needs OpenVINO (INFERENCE_ENGINE=openvino)")
        return Engine("onnxruntime", "f32", "cuda" if on_gpu else "cpu")
    native_bf16 = "BF16" in cpu_precisions
    if precision == "auto":
        precision = "bf16" if native_bf16 else "f32"
    return Engine("openvino", precision, "cpu")


def this_machine(engine: str, precision: str, device: str) -> Engine:
    """`choose` with this machine's facts."""
    import onnxruntime as ort  # noqa: PLC0415 - imported by the detectors anyway

    openvino = importlib.util.find_spec("openvino") is not None
    cpu_precisions: list[str] = []
    if openvino:
        from inference.openvino_engine import cpu_precisions as ask  # noqa: PLC0415 - only where installed

        cpu_precisions = ask()
    return choose(engine, precision, device, openvino=openvino, machine=platform.machine(),
                  providers=ort.get_available_providers(), cpu_precisions=cpu_precisions)  # fmt: skip


def build(engine: Engine, model_path: Path, conf_threshold: float, iou_threshold: float, threads: int,
          max_detections: int, pinning: bool | None) -> Detector:  # fmt: skip
    """`pinning`: whether OpenVINO pins its threads to cores (None: its default, as a script run alone would)."""
    if engine.name == "openvino":
        from inference.openvino_engine import OpenVinoDetector  # noqa: PLC0415 - only where installed

        return OpenVinoDetector(model_path, conf_threshold, iou_threshold, threads, max_detections, engine.precision,
                                pinning=pinning)  # fmt: skip
    return OnnxDetector(model_path, conf_threshold, iou_threshold, threads, max_detections, engine.device)
