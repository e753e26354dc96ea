"""The OpenVINO adapter of the detector port: the fastest engine on an x86-64 CPU.

The model takes the letterboxed frame as it is (uint8, BGR, height x width x channels): OpenVINO's
own preprocessing, compiled into the model, turns it into the network's input, inside the streams.
The model is compiled for each input shape it is given (a video's frames share one: a static shape
runs about 7% faster than the dynamic model) with OpenVINO's throughput hint, and each frame of a
batch is one asynchronous request, so the CPU's streams work on several frames at once. Precision is
the CPU's fastest that keeps the detections (`inference.engines`): bf16 where the CPU has AMX, f32
elsewhere.

A worker never owns the machine's cores, so its threads are not pinned to them: OpenVINO's default
pins each process's stream threads to the first cores it may use, so two single-threaded workers (the
local stack's default, one per core) ran on one core, at 24 + 24 frames/s against 42 + 42 unpinned on
the 2-core development machine; pods that share a node would do the same."""

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

from events.contracts import DetectedObject
from events.modelfile import ModelError, ModelInfo, describe
from inference.detector import Thresholds

SHAPES_KEPT = 4  # compiled shapes per model (one per video size being served at once, usually one)
_core: ov.Core | None = None


def core() -> ov.Core:
    global _core  # noqa: PLW0603 - one OpenVINO runtime per process, made when first needed
    if _core is None:
        _core = ov.Core()
    return _core


def cpu_precisions() -> list[str]:
    """What the CPU computes natively, as OpenVINO says (`BF16` on AMX or AVX-512 BF16, `FP32`, `INT8`...)."""
    return [str(capability) for capability in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def model_info(model: ov.Model) -> ModelInfo:
    """The serving facts (`events.modelfile`) from OpenVINO's reading of the ONNX file and its metadata."""

    def dims(shape: ov.PartialShape) -> list[Any]:
        return [d.get_length() if d.is_static else "?" for d in shape]

    metadata = {}
    if model.has_rt_info("framework"):
        metadata = {str(key): model.get_rt_info(["framework", str(key)]).astype(str)
                    for key in model.get_rt_info()["framework"]}  # fmt: skip
    return describe([(i.get_any_name(), dims(i.partial_shape)) for i in model.inputs],
                    [dims(o.partial_shape) for o in model.outputs], metadata)  # fmt: skip


class OpenVinoDetector(Thresholds):
    engine = "openvino"

    def __init__(
        self,
        model_path: Path,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        threads: int = 0,
        max_detections: int = 300,
        precision: str = "f32",
        hint: str = "THROUGHPUT",
        pinning: bool | None = False,
    ) -> None:
        try:
            self.model = core().read_model(str(model_path))
        except RuntimeError as error:
            raise ModelError(f"OpenVINO cannot read it: {str(error).splitlines()[0][:300]}") from error
        super().__init__(model_info(self.model), conf_threshold, iou_threshold, max_detections)
        self.model = frames_in(self.model)
        self.precision = precision
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
        if pinning is not None:  # None: OpenVINO's default (it pins its threads to cores on Linux)
            self.config["ENABLE_CPU_PINNING"] = pinning
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
            self.config["NUM_STREAMS"] = min(threads, 2) if hint == "THROUGHPUT" else 1
        self.compiled: OrderedDict[tuple[int, ...], ov.AsyncInferQueue] = OrderedDict()

    def queue(self, shape: tuple[int, ...]) -> ov.AsyncInferQueue:
        """The requests of the model compiled for one input shape [1, height, width, 3]."""
        if (queue := self.compiled.get(shape)) is not None:
            self.compiled.move_to_end(shape)
            return queue
        model = self.model.clone()
        model.reshape({self.info.input_name: list(shape)})
        compiled = core().compile_model(model, "CPU", self.config)
        queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue.set_callback(_keep_output)
        self.compiled[shape] = queue
        while len(self.compiled) > SHAPES_KEPT:
            self.compiled.popitem(last=False)
        return queue

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedObject]]:
        """One asynchronous request per frame, as many running at once as the CPU has streams."""
        fitted = self.fit(images)
        outputs: list[np.ndarray | None] = [None] * len(images)
        used = []
        for i, (boxed, _) in enumerate(fitted):
            queue = self.queue((1, *boxed.shape))
            queue.start_async({0: boxed[None]}, (outputs, i))
            used.append(queue)
        for queue in {id(q): q for q in used}.values():
            queue.wait_all()
        if any(output is None for output in outputs):
            raise RuntimeError("OpenVINO gave no output for a frame")
        return [self.objects(output, fit) for output, (_, fit) in zip(outputs, fitted, strict=True)]  # type: ignore[arg-type]


def frames_in(model: ov.Model) -> ov.Model:
    """The model with its input as frames come: uint8 BGR [batch, height, width, 3] (YOLO wants float32
    RGB [batch, 3, height, width] in [0, 1])."""
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
    return ppp.build()


def _keep_output(request: ov.InferRequest, userdata: tuple[list[np.ndarray | None], int]) -> None:
    outputs, i = userdata
    outputs[i] = request.get_output_tensor(0).data[0].copy()
