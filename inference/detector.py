"""The detector port, what every engine shares (letterbox in, boxes out), and its ONNX Runtime adapter
(CPU, and CUDA for GPUs). The OpenVINO adapter is `inference.openvino_engine`; `inference.engines`
chooses between them."""

from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from events.contracts import DetectedObject
from events.modelfile import ModelInfo, describe
from inference.postprocess import decode, decode_end2end
from inference.preprocess import Letterbox, letterbox, to_tensor


class Detector(Protocol):
    names: tuple[str, ...]
    engine: str  # "openvino", "onnxruntime"
    precision: str  # "bf16", "f32"

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedObject]]:
        """BGR frames of any size -> one list of objects per frame, boxes in that frame's pixels."""
        ...


class Thresholds:
    """The model's facts and the thresholds that turn one image's raw output into objects (every engine)."""

    def __init__(self, info: ModelInfo, conf_threshold: float, iou_threshold: float, max_detections: int) -> None:
        self.info, self.names = info, info.names
        self.size, self.stride = info.imgsz, info.stride
        self.conf_threshold, self.iou_threshold, self.max_detections = conf_threshold, iou_threshold, max_detections

    def fit(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, Letterbox]]:
        return [letterbox(image, self.size, self.stride) for image in images]

    def objects(self, output: np.ndarray, fit: Letterbox) -> list[DetectedObject]:
        found = (
            decode_end2end(output, fit, self.conf_threshold, self.max_detections)
            if self.info.layout == "end2end"
            else decode(output, fit, self.conf_threshold, self.iou_threshold, self.max_detections)
        )
        return [DetectedObject(class_name=self.names[d.class_id], box=list(d.box), conf=d.conf)
                for d in found if 0 <= d.class_id < len(self.names)]  # fmt: skip


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def execution_providers(device: str, available: list[str] | None = None) -> list[str]:
    """ONNX Runtime's providers for INFERENCE_DEVICE. `cpu`: the CPU. `cuda`: the GPU (onnxruntime-gpu,
    `pip install 'vdetect[gpu]'`), an error if this ONNX Runtime cannot use it. `auto`: the GPU when this
    ONNX Runtime has CUDA, the CPU otherwise. The CPU stays listed after CUDA for operators CUDA lacks."""
    available = ort.get_available_providers() if available is None else available
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise RuntimeError("INFERENCE_DEVICE=cuda, but this ONNX Runtime has no CUDA provider: install "
                           "onnxruntime-gpu in place of onnxruntime (pip install 'vdetect[gpu]')")  # fmt: skip
    return [CPU]


class OnnxDetector(Thresholds):
    engine = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        threads: int = 0,
        max_detections: int = 300,
        device: str = "cpu",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = execution_providers(device)
        if CUDA in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from NVIDIA's wheels (the gpu image), before the provider loads
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        super().__init__(session_info(self.session), conf_threshold, iou_threshold, max_detections)
        self.precision = "f32"

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedObject]]:
        """One model call per input shape in the batch (frames of one video share theirs)."""
        fitted = self.fit(images)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (boxed, _) in enumerate(fitted):
            groups[boxed.shape if not self.info.batch_fixed else (i,)].append(i)
        results: list[list[DetectedObject]] = [[] for _ in images]
        for members in groups.values():
            (outputs,) = self.session.run(None, {self.info.input_name: to_tensor([fitted[i][0] for i in members])})
            for i, output in zip(members, outputs, strict=True):
                results[i] = self.objects(output, fitted[i][1])
        return results


def session_info(session: ort.InferenceSession) -> ModelInfo:
    """The serving facts of a loaded model (`events.modelfile`)."""
    return describe([(i.name, list(i.shape)) for i in session.get_inputs()],
                    [list(o.shape) for o in session.get_outputs()],
                    dict(session.get_modelmeta().custom_metadata_map))  # fmt: skip
