"""The detector port and its ONNX Runtime adapter (the default backend)."""

import ast
from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from events.contracts import DetectedObject
from inference.coco import COCO_NAMES
from inference.postprocess import decode
from inference.preprocess import letterbox, to_tensor


class Detector(Protocol):
    names: tuple[str, ...]

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedObject]]:
        """BGR frames of any size -> one list of objects per frame, boxes in that frame's pixels."""
        ...


def class_names(metadata: dict[str, str], count: int) -> tuple[str, ...]:
    """Names stored in an Ultralytics export; a COCO model that stores only "0".."79" gets COCO's names."""
    raw = metadata.get("names")
    names = ast.literal_eval(raw) if raw else {}
    ordered = tuple(str(names.get(i, i)) for i in range(count))
    if count == len(COCO_NAMES) and all(name == str(i) for i, name in enumerate(ordered)):
        return COCO_NAMES
    return ordered


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


class OnnxDetector:
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
        self.session = ort.InferenceSession(str(model_path), options, providers=execution_providers(device))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        metadata = self.session.get_modelmeta().custom_metadata_map
        height = model_input.shape[2]
        self.size = height if isinstance(height, int) else ast.literal_eval(metadata.get("imgsz", "[640]"))[0]
        self.batch_fixed = isinstance(model_input.shape[0], int)
        # a model with dynamic height and width takes frames padded only to its stride ("rect")
        self.stride = int(metadata.get("stride", 32)) if not isinstance(model_input.shape[2], int) else None
        count = self.session.get_outputs()[0].shape[1]
        self.names = class_names(metadata, (count if isinstance(count, int) else 84) - 4)
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedObject]]:
        """One model call per input shape in the batch (frames of one video share theirs)."""
        fitted = [letterbox(image, self.size, self.stride) for image in images]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (boxed, _) in enumerate(fitted):
            groups[boxed.shape if not self.batch_fixed else (i,)].append(i)
        results: list[list[DetectedObject]] = [[] for _ in images]
        for members in groups.values():
            (outputs,) = self.session.run(None, {self.input_name: to_tensor([fitted[i][0] for i in members])})
            for i, output in zip(members, outputs, strict=True):
                results[i] = [
                    DetectedObject(class_name=self.names[d.class_id], box=list(d.box), conf=d.conf)
                    for d in decode(output, fitted[i][1], self.conf_threshold, self.iou_threshold, self.max_detections)
                ]
        return results
